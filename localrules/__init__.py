"""localrules: a JAX laboratory for local learning rules."""
