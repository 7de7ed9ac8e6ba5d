"""`python -m bench`: the reference pipeline against Stillpoint's, under one seeded latency model."""
