"""Feedback: how the utility of round r's samples changes generation in round r+1
(preference pairs, U-DPO for causal LMs, Diffusion-DPO, embedding and noise optimisation)."""
