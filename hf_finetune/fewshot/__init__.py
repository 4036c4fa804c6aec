"""Few-shot text classification (the `few_shot` recipe section): SetFit and the embedding probe.

`model` is what evaluation and `predict` load (no `setfit` import needed); `train` fits a recipe through the
`setfit` library (the `fewshot` extra).
"""
