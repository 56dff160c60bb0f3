"""``qcompiler serve MODEL.pt2``: the completions server (``qcompiler/llm/server.py``) over a ``.pt2`` packaged from
``capture_lm(..., slots=n)``, until interrupted."""
from pathlib import Path
from typing import Any, Optional

import qcompiler as qc


def serve_cmd(a) -> tuple:
    try:
        import starlette  # noqa: F401  (qc.server_app imports it when called)
        import uvicorn
    except ImportError as e:
        raise ImportError(f"qcompiler serve needs Starlette and uvicorn: pip install 'qcompiler[serve]' ({e})") from e
    path = Path(a.model)
    if path.suffix != ".pt2":
        raise ValueError(f"qcompiler serve takes a .pt2 packaged from capture_lm(..., slots=n); got {a.model}")
    run = qc.load(path, allow_imports=a.allow_import or ())
    lm = run.metadata.get("lm")
    if lm is None or lm.get("sequences") != "independent":
        raise ValueError(f"{path} is not an LM captured with slots: capture it with qcompiler.capture_lm(model, "
                         "max_seq_len, slots=n) so that requests decode together, each in its own slot")
    tokenizer = _tokenizer(a.tokenizer)
    chunk = {} if a.prefill_chunk is None else {"prefill_chunk": a.prefill_chunk}
    application = qc.server_app(run, tokenizer=tokenizer, eos_token_id=a.eos_token_id, model_name=a.name or path.stem,
                                **chunk)
    print(f"qcompiler: serving {path} ({lm['batch_size']} slots, max_seq_len {lm['max_seq_len']}) on "
          f"http://{a.host}:{a.port}", flush=True)
    uvicorn.run(application, host=a.host, port=a.port, log_level=a.log_level)
    return {"served": str(path)}, "stopped"


def _tokenizer(name: Optional[str]) -> Any:
    if name is None:
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError("--tokenizer needs transformers (pip install 'transformers>=5.0')") from e
    return AutoTokenizer.from_pretrained(name)
