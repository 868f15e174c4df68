"""A dataset seen through a model's eyes (issue 24): every image's embedding and a nearest-neighbour index over them
(:mod:`cxrcore.lens.index`), similar cases for a new image."""
