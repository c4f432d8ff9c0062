"""lmjax: recurrence-first language models in JAX/Flax, with one trainer."""
