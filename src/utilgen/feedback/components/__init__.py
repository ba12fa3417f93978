"""The built-in feedback components, one module each, registered by name in
:data:`utilgen.registry.FEEDBACK_COMPONENTS`:

* ``dpo`` (:mod:`.dpo`): model-level feedback, DPO of the generator between rounds on
  utility-ranked preference pairs (U-DPO, UtilGen's Diffusion-DPO);
* ``hard_samples`` (:mod:`.hard_samples`): GenDataAgent's img2img around the hardest real
  samples;
* ``prompt_ascent`` and ``noise_opt`` (:mod:`.instance`): UtilGen's instance level,
  prompt-embedding ascent and initial-noise optimisation of each request.

Each module imports only the config at load time (the config's checks run while a config
validates, before torch is imported); the algorithms are imported when a round uses them.
"""
