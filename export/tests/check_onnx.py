"""Checks an exported scinterp tool in onnxruntime against scinterp's own outputs.

usage: python check_onnx.py TOOL_DIR CASE_JSON

CASE_JSON holds {"n", "n_genes", "expression" (row-major [n, n_genes]), "latent", "pseudotime",
"class_probabilities"} as scinterp evaluated them. Each output must agree to within 1e-5 relative:
max|ort - scinterp| <= 1e-5 * max|scinterp|. Also checks the graph against card.json (panel size,
labels, opset >= 17). Exits non-zero on any mismatch. Needs numpy and onnxruntime (and onnx, if
installed, for its checker).
"""
import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort


def main() -> int:
    tool = pathlib.Path(sys.argv[1])
    case = json.loads(pathlib.Path(sys.argv[2]).read_text())
    card = json.loads((tool / "card.json").read_text())
    model_path = str(tool / "tool.onnx")
    try:
        import onnx

        model = onnx.load(model_path)
        onnx.checker.check_model(model, full_check=True)
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert opset >= 17, f"opset {opset}"
    except ImportError:
        pass
    n, g = case["n"], case["n_genes"]
    assert g == len(card["panel"]), f"{g} genes in the case, {len(card['panel'])} in the card"
    x = np.asarray(case["expression"], dtype=np.float32).reshape(n, g)
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["latent", "pseudotime", "class_probabilities"], names
    latent, pseudotime, probs = session.run(None, {"expression": x})
    assert probs.shape == (n, len(card["labels"])), probs.shape
    worst = 0.0
    for name, got in [("latent", latent), ("pseudotime", pseudotime), ("class_probabilities", probs)]:
        want = np.asarray(case[name], dtype=np.float32).reshape(got.shape)
        scale = max(float(np.abs(want).max()), 1e-30)
        rel = float(np.abs(got - want).max()) / scale
        worst = max(worst, rel)
        if rel > 1e-5:
            print(f"{name}: relative difference {rel:.3g} > 1e-5")
            return 1
    print(f"onnxruntime {ort.__version__}: {tool.name} agrees with scinterp (max relative difference {worst:.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
