"""Static int8: calibrate activation ranges on sample sentences, then run int8 x int8 with fixed scales.

    python examples/static_int8.py [--observer minmax|moving_average]

Static quantization fixes each linear's input scale ahead of time from calibration data
(``prepare`` inserts observers, running the model records ranges, ``convert`` freezes
them), so no range is computed at run time. The three stages are shown one by one;
``qc.quantize(..., calibration_data=...)`` does the same in one call. Calibration and
evaluation use different sentences.
"""
import argparse

import qcompiler as qc
from qcompiler.zoo import CALIBRATION_SENTENCES, SENTENCES, minilm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--observer", default="minmax", choices=["minmax", "moving_average"])
    args = ap.parse_args()
    m = minilm()
    program = qc.capture(m.model, (), example_kwargs=m.example_kwargs, dynamic_shapes=m.dynamic_shapes)
    prepared = qc.prepare(program, qc.Int8StaticActivationInt8WeightConfig(observer=args.observer))
    batches = [m.encode(CALIBRATION_SENTENCES[i:i + 2]) for i in range(0, len(CALIBRATION_SENTENCES), 2)]
    print("calibrated on", qc.calibrate(prepared, batches), "batches")
    quantized = qc.convert(prepared)
    lowered = qc.lower(quantized, "cpu")
    print(qc.report(lowered))

    reference = m.embed(m.model, SENTENCES)
    cosine = (m.embed(lowered.module(), SENTENCES) * reference).sum(-1)
    print(f"static int8 ({args.observer}): embedding cosine to fp32 over {len(SENTENCES)} held-out sentences: "
          f"mean {cosine.mean():.4f}, worst {cosine.min():.4f}")


if __name__ == "__main__":
    main()
