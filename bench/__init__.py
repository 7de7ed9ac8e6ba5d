"""`python -m bench`: the seeds' pipeline against Stillpoint's, under one seeded latency model."""
