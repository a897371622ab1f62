"""Building blocks shared by the generative recommenders (LM loading, prompt templates)."""
