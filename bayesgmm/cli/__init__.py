"""The ``bayesgmm`` command line."""
