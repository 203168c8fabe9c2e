"""Layer types: each defined once (YAML parameters, shape rule, counts, maths); see base.py."""
