"""What the two peer-side scripts share (bench/peer_llmcompressor_side.py for GPTQ and
bench/peer_llmcompressor_awq_side.py for AWQ). It runs in llm-compressor's own virtual environment, so it
imports torch at the top and the peer's libraries only inside the functions; never qviz."""

from __future__ import annotations

import argparse
import time

import torch


def parser(description: str) -> argparse.ArgumentParser:
    """The options every side script takes; each adds its method's own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="float safetensors folder (qviz's cached model)")
    p.add_argument("--windows", required=True, help=".pt file with 'calib': (n, seq) ids, BOS included")
    p.add_argument("--out", required=True)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    return p


def load(args):
    """Set the thread count; return (the float32 model, the calibration windows as a datasets.Dataset,
    the windows tensor (n, seq + 1): qviz prepended BOS, so it is already there)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    calib = torch.load(args.windows)["calib"]
    dataset = Dataset.from_dict(
        {"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()}
    )
    return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32), dataset, calib


def timed_oneshot(model, dataset, calib: torch.Tensor, recipe) -> float:
    """Seconds that llm-compressor's `oneshot` takes on every window, in order."""
    from llmcompressor import oneshot

    start = time.perf_counter()
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=len(calib),
        max_seq_length=calib.shape[1],
        shuffle_calibration_samples=False,
    )
    return time.perf_counter() - start


def versions() -> dict:
    import llmcompressor
    import transformers

    return {
        "llmcompressor": llmcompressor.__version__,
        "transformers": transformers.__version__,
        "torch": str(torch.__version__),
    }
