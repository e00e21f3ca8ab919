"""What the chapters run on: data, tiny models, their shipped checkpoints, training loops.

- ``data``: the digits (scikit-learn) and the two text domains (a corpus snapshot in
  ``corpora/``), with a shared character vocabulary (chapters 07-08).
- ``models``: ``DigitsMLP`` and ``CharGPT``; ``pretrain``: their recipes, and
  ``load_pretrained`` for the checkpoints shipped in ``checkpoints/``.
- ``train``: one training loop for full fine-tuning, LoRA and QLoRA, plus evaluation.
- ``race``: the fair-race protocol every trained comparison uses, and ``claim`` (the assert on
  a trained number that records its margin for ``make robust``).
- ``analysis`` (chapter 07) and ``forgetting`` (chapter 08).
- ``memory`` (chapter 06): activation bytes, measured on real tensors and counted for a
  LLaMA-style decoder.
- ``smollm`` (chapter 11): SmolLM2-135M-Instruct read from its installed GGUF file, chat,
  supervised fine-tuning on the reply tokens, perplexity; the chapter's small data sets.

These modules use the idea modules (``minilora.lora``, ``minilora.nf4``); never the reverse.
"""
