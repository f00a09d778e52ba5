"""Training recipes: train or distil torchmos predictors on your own data.

Each recipe module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is
mounted by the command line as ``torchmos train <recipe> ...``.
"""
