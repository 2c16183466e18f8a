"""The listener policy: pure PyTorch + NumPy, no Django (nanoGPT-style, one concern per file).

| module        | what it holds                                                               |
|---------------|-----------------------------------------------------------------------------|
| config        | ModelConfig, TrainConfig, SampleConfig (dataclasses, a comment per default) |
| tokenizer     | ActionTokenizer: 256 bins per dimension between the 1st and 99th percentile |
| features      | log-mel audio, words heard per frame (hashed or a registered encoder), video|
| data          | EpisodeData, checks with clear errors, prepared inputs, training windows    |
| model         | VLA: speaker encoders, causal transformer, per-dimension bin heads, cache   |
| backbone      | BackboneVLA: a local Llama / Qwen decoder in the model's place, LoRA, words |
|               | as the decoder's own tokens among the frames; build_model(), pin_pretrained |
| hf            | local Hugging Face model directories: checks, hashes, safetensors-only load |
| video         | speaker video decoded at the policy's rate, DINOv2 / SigLIP features, store |
| presets       | demo / default / backbone: the configs an admin starts SFT from             |
| device        | pick_device(), autocast(): where the policy runs and in which precision     |
| policy        | Policy = model + tokenizer + config; prepare() and sample()                 |
| train         | train(): SFT loss, AdamW + cosine, bf16 on CUDA, exact resume               |
| distributed   | data-parallel layer: torchrun env, process group, DDP, shards, launch()     |
| train_dist    | SFT as a torchrun program; train_with_torchrun() for the gpu worker         |
| sample        | sample_prepared(): K candidates per episode, closed loop, seeded per episode|
| fastsample    | the same draws with static shapes, the decode step a CUDA graph on a GPU    |
| checkpoint    | save_checkpoint / load_checkpoint / load_policy / file_sha256               |
| metrics       | L2, FD, P-FD, variance, SI-diversity, FRDiv, FRVar, FRSyn (NumPy)           |
| baselines     | ground truth, random clip, nearest neighbour, mirror, mean face             |
| evaluate      | evaluate(): every metric for the policy and every baseline (+ oracle)       |
| demo          | train_small_demo_policy(): the CPU-sized policy of the demo and the tests   |

The import graph of these modules is acyclic (tests/policy/ml/test_imports.py): ``device``
and ``sample`` know nothing of ``Policy``; ``policy`` uses ``sample``, and ``checkpoint`` and
``train`` build a ``Policy``.

Import the modules you need (``from policy.ml.train import train``); this package imports
nothing itself, so ``policy.ml.metrics`` stays usable without loading torch.
"""
