"""Writes the small pickle / PyTorch-zip fixtures used by the Rust tests of
`models/src/checkpoint/pickle.rs` and `models/src/checkpoint/torch_zip.rs`.

Run from the repository root with a Python that has torch, numpy and safetensors:

    python tests/reference/make_pickle_fixtures.py

Everything is seeded, so re-running gives the same tensor values (torch.save also writes a random
`.data/serialization_id`, so the .pt bytes themselves may differ). Output goes to
tests/fixtures/pickle/:

- state_dict_tied.pt               torch.save of an OrderedDict state dict: f32 tensors, tied weights
                                   (the same tensor under two names, and a second view of the same
                                   storage), a transposed (non-contiguous) view, views with storage
                                   offsets, an nn.Parameter, f16 / bf16 / i64 tensors, a 0-d and an
                                   empty tensor, and a `_metadata` attribute like module.state_dict().
- state_dict_tied.expected.safetensors
                                   the same tensors as contiguous clones, the exact expected values.
- not_a_state_dict.pt              torch.save of {'epoch': 3, 'model': {...}} (a training checkpoint),
                                   written through a buffer so its zip root folder is `archive`.
- legacy.pt                        the same state dict in the pre-1.6 non-zip format.
- deflated.pt                      state_dict_tied.pt re-zipped with compression (must be refused).
- big_endian.pt                    state_dict_tied.pt with `byteorder` = `big` (must be refused).
- os_system.pt                     a zip whose data.pkl calls `os.system` (must be refused, never run).
- numpy_scalars_p4.pkl / _p5.pkl   dict str -> numpy scalars (float64, float32, int16, int64, uint8)
                                   and plain ints, with the same scalar objects repeated (memo reuse),
                                   pickled with protocols 4 and 5.
- numpy_scalars.expected.json      the expected entries of those dicts, in order: [key, kind, value]
                                   where floats are given as the u64 of their f64 bits (exact).
"""

import collections
import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import torch
from safetensors.torch import save_file

OUT = os.path.join("tests", "fixtures", "pickle")


def state_dict():
    torch.manual_seed(0)
    sd = collections.OrderedDict()
    word = torch.randn(6, 4)
    sd["bert.embeddings.word_embeddings.weight"] = word
    # Tied like BERT's MLM decoder: the very same tensor object under a second name.
    sd["cls.predictions.decoder.weight"] = word
    # A different view object over the same storage (offset 4, rows 1..5).
    sd["tied.rows_1_to_5"] = word[1:]
    base = torch.randn(3, 5)
    sd["transposed"] = base.t()  # shape (5, 3), strides (1, 5): non-contiguous
    block = torch.randn(8, 3)
    sd["offset_view"] = block[2:]  # storage offset 6
    sd["column_view"] = block[:, 1]  # offset 1, stride 3
    sd["param"] = torch.nn.Parameter(torch.randn(3))  # pickled via _rebuild_parameter
    sd["half"] = torch.randn(2, 3).to(torch.float16)
    sd["bfloat"] = torch.randn(4).to(torch.bfloat16)
    sd["ids"] = torch.tensor([[0, -1, 2**40], [7, 8, -(2**35)]], dtype=torch.int64)
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 4)
    # module.state_dict() attaches this; it is pickled as BUILD state on the OrderedDict.
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    return sd


def write_zip_copy(src, dst, compression, byteorder=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if byteorder is not None and info.filename.endswith("/byteorder"):
                data = byteorder
            zout.writestr(info.filename, data)


def numpy_scalars():
    rng = np.random.default_rng(0)
    shared_f = np.float64(rng.uniform(0.1, 10.0))
    shared_i = np.int16(-1234)
    d = {
        "<pad>": 0,
        "<mask>": 1,
        "f64_a": np.float64(rng.uniform(0.1, 10.0)),
        "f64_shared_1": shared_f,
        "i16_shared_1": shared_i,
        "f64_tiny": np.float64(7.158424271565943e-07),
        "f64_shared_2": shared_f,  # the same object: BINGET of the built scalar
        "i16_shared_2": shared_i,
        "i16_max": np.int16(32767),
        "f32": np.float32(rng.standard_normal()),
        "i64": np.int64(-(2**40) - 3),
        "u8": np.uint8(200),
        "big_int": 70000,
        "f64_shared_3": shared_f,
    }
    expected = []
    for k, v in d.items():
        if isinstance(v, (np.floating,)):
            bits = struct.unpack("<Q", struct.pack("<d", float(v)))[0]
            expected.append([k, "float", bits])
        else:
            expected.append([k, "int", int(v)])
    return d, expected


def main():
    os.makedirs(OUT, exist_ok=True)
    sd = state_dict()
    tied = os.path.join(OUT, "state_dict_tied.pt")
    torch.save(sd, tied)
    save_file(
        {k: v.detach().contiguous().clone() for k, v in sd.items()},
        os.path.join(OUT, "state_dict_tied.expected.safetensors"),
    )
    torch.save(sd, os.path.join(OUT, "legacy.pt"), _use_new_zipfile_serialization=False)
    write_zip_copy(tied, os.path.join(OUT, "deflated.pt"), zipfile.ZIP_DEFLATED)
    write_zip_copy(tied, os.path.join(OUT, "big_endian.pt"), zipfile.ZIP_STORED, b"big")

    buf = io.BytesIO()
    torch.manual_seed(1)
    torch.save({"epoch": 3, "model": {"w": torch.randn(2, 2)}, "lr": 1e-4}, buf)
    with open(os.path.join(OUT, "not_a_state_dict.pt"), "wb") as f:
        f.write(buf.getvalue())

    # os.system('echo pwned'): a pickle that would run a command if loaded by Python's pickle.
    evil = b"\x80\x02cos\nsystem\nq\x00X\x0b\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03."
    with zipfile.ZipFile(os.path.join(OUT, "os_system.pt"), "w", zipfile.ZIP_STORED) as z:
        z.writestr("os_system/data.pkl", evil)
        z.writestr("os_system/byteorder", b"little")
        z.writestr("os_system/version", b"3\n")

    d, expected = numpy_scalars()
    for proto in (4, 5):
        with open(os.path.join(OUT, f"numpy_scalars_p{proto}.pkl"), "wb") as f:
            pickle.dump(d, f, protocol=proto)
    with open(os.path.join(OUT, "numpy_scalars.expected.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(e) for e in expected) + "\n]\n")

    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
