"""Named training recipes: one recorded bundle of sampling, augmentation, loss, optimiser, schedule, budget unit and
inference that every model of a run trains with (:mod:`segbench.recipes.catalog`), and nnU-Net's parts of it."""
