#!/usr/bin/env python3
"""PyTorch reference for the engine: the same ConvMixer and SmallResNet modules (same parameter
names), used to

  fixture   write tests/fixtures/convmixer_reference.safetensors: a ConvMixer-32/2, its weights,
            an input batch, logits, loss and every parameter gradient in training mode,
            evaluation-mode logits, and the parameters after two AdamW steps;
  fixture-resnet
            write tests/fixtures/resnet_reference.safetensors: the same record, without the AdamW
            steps, for a SmallResNet (width 4, 1 block per stage) on 1x12x12 images;
  bench     time PyTorch training steps on synthetic data (compare with examples/bench_model);
  predict   load an engine checkpoint (train's last.safetensors) into the PyTorch module and
            print, per image, the same JSON line as `predict --json`, to compare number for number.

Tensors are stored in PyTorch's layouts except activations, which the engine takes as NHWC.
Needs PyTorch (Debian: python3-torch). Safetensors files are written by hand (format: 8-byte
little-endian header length, JSON header, raw little-endian data), so no extra package is needed.
"""
import argparse
import json
import struct
import sys
import time

import torch
import torch.nn as nn


class PatchEmbeddings(nn.Module):
    def __init__(self, d_model, patch_size, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size)
        self.act = nn.GELU()
        self.norm = nn.BatchNorm2d(d_model)

    def forward(self, x):
        return self.norm(self.act(self.conv(x)))


class ConvMixerLayer(nn.Module):
    def __init__(self, d_model, kernel_size):
        super().__init__()
        self.depth_wise_conv = nn.Conv2d(d_model, d_model, kernel_size=kernel_size,
                                         groups=d_model, padding=(kernel_size - 1) // 2)
        self.act1 = nn.GELU()
        self.norm1 = nn.BatchNorm2d(d_model)
        self.point_wise_conv = nn.Conv2d(d_model, d_model, kernel_size=1)
        self.act2 = nn.GELU()
        self.norm2 = nn.BatchNorm2d(d_model)

    def forward(self, x):
        x = self.norm1(self.act1(self.depth_wise_conv(x))) + x
        return self.norm2(self.act2(self.point_wise_conv(x)))


class ClassificationHead(nn.Module):
    def __init__(self, d_model, n_classes):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(d_model, n_classes)

    def forward(self, x):
        return self.linear(self.pool(x)[:, :, 0, 0])


class ConvMixer(nn.Module):
    def __init__(self, dim, depth, kernel, patch, classes, in_channels=3):
        super().__init__()
        self.conv_mixer_layers = nn.ModuleList(ConvMixerLayer(dim, kernel) for _ in range(depth))
        self.patch_emb = PatchEmbeddings(dim, patch, in_channels)
        self.classification = ClassificationHead(dim, classes)

    def forward(self, x):
        x = self.patch_emb(x)
        for layer in self.conv_mixer_layers:
            x = layer(x)
        return self.classification(x)


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class SmallResNet(nn.Module):
    """models/resnet.cpp's SmallResNet, with the same module tree (names body.<i>...)."""

    def __init__(self, width, blocks, classes, in_channels):
        super().__init__()
        self.body = nn.Sequential(*small_resnet_layers(width, blocks, classes, in_channels))

    def forward(self, x):
        return self.body(x)


def small_resnet_layers(width, blocks, classes, in_channels):
    def conv_bn_relu(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    def block(w):
        branch = nn.Sequential(*conv_bn_relu(w, w), nn.Conv2d(w, w, 3, padding=1, bias=False),
                               nn.BatchNorm2d(w))
        return nn.Sequential(Residual(branch), nn.ReLU())

    layers = conv_bn_relu(in_channels, width) + [block(width) for _ in range(blocks)]
    layers += [nn.MaxPool2d(2, 2)] + conv_bn_relu(width, 2 * width)
    layers += [block(2 * width) for _ in range(blocks)] + [nn.MaxPool2d(2, 2)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes)]
    return layers


_DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8",
           torch.bfloat16: "BF16"}


def save_safetensors(path, tensors, metadata):
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 \
            else t.numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)


def load_safetensors(path):
    """Returns ({name: tensor}, metadata) from a safetensors file."""
    import numpy as np
    names = {v: k for k, v in _DTYPES.items()}
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw = data[8 + n + begin:8 + n + end]
        dtype = names[entry["dtype"]]
        if dtype == torch.bfloat16:
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(raw, dtype=torch.empty(0, dtype=dtype).numpy().dtype).copy())
        tensors[name] = t.reshape(entry["shape"])
    return tensors, metadata


def predict(args):
    import numpy as np
    from PIL import Image
    tensors, meta = load_safetensors(args.checkpoint)
    if meta.get("format") != "convmixer-engine checkpoint":
        sys.exit(f"{args.checkpoint}: not a checkpoint of the engine")
    dims = {k: int(meta["model." + k]) for k in
            ("dim", "depth", "kernel", "patch", "classes", "in_channels")}
    if meta["model"] == "convmixer":
        model = ConvMixer(dims["dim"], dims["depth"], dims["kernel"], dims["patch"],
                          dims["classes"], dims["in_channels"])
    else:
        model = SmallResNet(dims["dim"], dims["depth"], dims["classes"], dims["in_channels"])
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    model.eval()
    height, width = int(meta["data.height"]), int(meta["data.width"])
    classes = meta["data.classes"].split(",")
    mean = torch.tensor([float(v) for v in meta["data.mean"].split(",")])
    std = torch.tensor([float(v) for v in meta["data.std"].split(",")])
    mode = "RGB" if dims["in_channels"] == 3 else "L"
    for path in args.images:
        image = Image.open(path).convert(mode)
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).float() / 255.0
        x = x.reshape(height, width, -1)
        x = ((x - mean) / std).permute(2, 0, 1).unsqueeze(0)
        with torch.no_grad():
            logits = model(x)[0].double()
        probs = torch.softmax(logits, 0)
        order = torch.argsort(probs, descending=True, stable=True)[:args.top]
        print(json.dumps({"image": path, "logits": logits.tolist(), "probs": probs.tolist(),
                          "top": [{"class": classes[i], "index": int(i), "prob": float(probs[i])}
                                  for i in order.tolist()]}, separators=(",", ":")))


def nhwc(x):
    return x.permute(0, 2, 3, 1).contiguous()


def record_step(model, x, labels, label_smoothing):
    """The input (NHWC), labels and initial state of `model`, then one training-mode forward and
    backward (logits, loss, every parameter's gradient, the updated buffers) and evaluation-mode
    logits. Leaves the gradients in the model and the model in evaluation mode."""
    out = {"input": nhwc(x), "labels": labels}
    for name, t in model.state_dict().items():
        out["init." + name] = t.clone()

    model.train()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    loss.backward()
    out["train.logits"] = logits.detach()
    out["train.loss"] = loss.detach().reshape(())
    for name, p in model.named_parameters():
        out["grad." + name] = p.grad.clone()
    for name, b in model.named_buffers():
        out["train_buffers." + name] = b.clone()

    model.eval()
    with torch.no_grad():
        out["eval.logits"] = model(x)
    return out, loss


def fixture(args):
    torch.manual_seed(1234)
    cfg = dict(dim=32, depth=2, kernel=5, patch=2, classes=10)
    model = ConvMixer(**cfg)
    x = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([3, 0, 9, 3], dtype=torch.int64)
    out, loss = record_step(model, x, labels, args.label_smoothing)

    # Two AdamW steps from the initial weights (the gradients above are step 1's). Each step's
    # gradients are saved so the engine's update rule is compared on identical inputs.
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
    for step in (1, 2):
        if step == 2:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), labels,
                                               label_smoothing=args.label_smoothing)
            loss.backward()
        for name, p in model.named_parameters():
            out[f"adamw{step}_grad.{name}"] = p.grad.clone()
        opt.step()
        out[f"adamw{step}.loss"] = loss.detach().reshape(())
        for name, p in model.named_parameters():
            out[f"adamw{step}.{name}"] = p.detach().clone()

    meta = dict(cfg, label_smoothing=args.label_smoothing, adamw_lr=0.01, adamw_weight_decay=0.05,
                torch_version=torch.__version__, generator="scripts/pytorch_reference.py fixture")
    save_safetensors(args.out, out, meta)
    print(f"wrote {args.out}: {len(out)} tensors, loss {out['train.loss'].item():.6f}")


def fixture_resnet(args):
    torch.manual_seed(1234)
    cfg = dict(width=4, blocks=1, classes=10, in_channels=1)
    model = SmallResNet(**cfg)
    x = torch.randn(3, 1, 12, 12)
    labels = torch.tensor([3, 0, 9], dtype=torch.int64)
    out, _ = record_step(model, x, labels, args.label_smoothing)
    meta = dict(cfg, label_smoothing=args.label_smoothing, torch_version=torch.__version__,
                generator="scripts/pytorch_reference.py fixture-resnet")
    save_safetensors(args.out, out, meta)
    print(f"wrote {args.out}: {len(out)} tensors, loss {out['train.loss'].item():.6f}")


def bench(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = ConvMixer(args.dim, args.depth, args.kernel, args.patch, 10).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.005)
    x = torch.randn(args.batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"pytorch {torch.__version__} threads={torch.get_num_threads()} "
          f"step_ms={1000 * seconds / args.steps:.1f}")
    print(f"train_img_per_s={args.batch * args.steps / seconds:.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fixture", help="write the parity fixture")
    f.add_argument("--out", default="tests/fixtures/convmixer_reference.safetensors")
    f.add_argument("--label-smoothing", type=float, default=0.1)
    r = sub.add_parser("fixture-resnet", help="write the SmallResNet parity fixture")
    r.add_argument("--out", default="tests/fixtures/resnet_reference.safetensors")
    r.add_argument("--label-smoothing", type=float, default=0.0)
    b = sub.add_parser("bench", help="time PyTorch training steps on synthetic data")
    for flag, default in (("dim", 256), ("depth", 8), ("kernel", 5), ("patch", 2), ("batch", 64),
                          ("steps", 5), ("warmup", 2), ("threads", 2)):
        b.add_argument(f"--{flag}", type=int, default=default)
    b.add_argument("--device", default="cpu")
    p = sub.add_parser("predict", help="classify images with an engine checkpoint in PyTorch")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--top", type=int, default=3)
    p.add_argument("images", nargs="+")
    args = parser.parse_args()
    {"fixture": fixture, "fixture-resnet": fixture_resnet, "bench": bench,
     "predict": predict}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
