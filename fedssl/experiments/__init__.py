"""The studies the launchers run: each combines federated runs (:mod:`fedssl.federation`),
centralized references and baselines, and writes its results page."""
