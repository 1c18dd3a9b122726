#!/usr/bin/env python3
"""PyTorch reference for the engine: the same ConvMixer and SmallResNet modules (same parameter
names), used to

  fixture   write tests/fixtures/convmixer_reference.safetensors: a ConvMixer-32/2, its weights,
            an input batch, logits, loss and every parameter gradient in training mode,
            evaluation-mode logits, and the parameters after two AdamW steps;
  fixture-resnet
            write tests/fixtures/resnet_reference.safetensors: the same record, without the AdamW
            steps, for a SmallResNet (width 4, 1 block per stage) on 1x12x12 images;
  fixture-resize
            write tests/fixtures/resize_reference.safetensors: a random uint8 image and what
            interpolate(mode="bilinear", antialias=True) makes of it at several sizes (predict's
            resize, engine/data/resize.h);
  fixture-augment
            write tests/fixtures/augment_reference.safetensors: torchvision's RandAugment ops
            (_apply_op, its magnitude table, both signs), hflip and resized_crop applied to random
            uint8 RGB and grey images, to compare the engine's augmentation bit for bit;
  bench     time PyTorch training steps on synthetic data (compare with examples/bench_model):
            --precision fp32|bf16 (bf16 autocast, fp32 master weights), --compile, --tf32
            (off by default: true fp32), channels-last; prints step_ms=, peak_mem_mb= (CUDA)
            and train_img_per_s= lines (scripts/bench.sh, scripts/bench_gpu.sh read them);
  train     train ConvMixer on an image folder with the engine trainer's recipe and defaults
            (AdamW, per-step onecycle schedule, the trainer's augmentation flags mirrored with
            torchvision), to compare accuracy and speed with examples/train;
  predict   load an engine checkpoint (train's last.safetensors, or the run directory) into the
            PyTorch module and print, per image, the same JSON line as `predict --json`, to
            compare number for number; an unreadable image is named on stderr, the others are
            still classified, and the exit status is 1 at the end.

Tensors are stored in PyTorch's layouts except activations, which the engine takes as NHWC.
Needs PyTorch (Debian: python3-torch; run under /usr/bin/python3 when the python3 first on the PATH
lacks it and that one has it); train also needs torchvision. Runs on PyTorch 1.13 and 2.x
(--compile needs 2.x). Safetensors files are written by hand (format: 8-byte
little-endian header length, JSON header, raw little-endian data), so no extra package is needed.
"""
import argparse
import json
import os
import stat
import struct
import sys
import time
import zlib

from system_python import rerun_if_missing

rerun_if_missing("torch")
try:
    import torch
    import torch.nn as nn
except ImportError:
    sys.exit(f"pytorch_reference: PyTorch is missing from {sys.executable} and /usr/bin/python3 "
             "(apt install python3-torch)")


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
    recorded = metadata.pop("engine.data_crc32", None)
    if recorded is not None and f"{zlib.crc32(data[8 + n:]):08x}" != recorded:
        sys.exit(f"{path}: the tensor data is damaged (CRC-32 mismatch)")
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


def _open_error(e):
    """Why opening or stat-ing a file failed, in the engine's predict's words."""
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return "no such file"
    reason = e.strerror or str(e)
    return f"cannot open ({reason[:1].lower() + reason[1:]})"


def read_image(path):
    """(RGB uint8 HxWx3 pixels, None) as stb_image decodes path for the engine's predict, or
    (None, why it cannot be read) in the engine's words. 16-bit grey keeps the high byte of each
    value, as stb_image does (PIL's convert would clip it)."""
    import numpy as np
    from PIL import Image
    try:
        st = os.stat(path)
    except OSError as e:
        return None, _open_error(e)
    if stat.S_ISDIR(st.st_mode):
        return None, "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_size == 0:
        return None, "empty file"
    try:
        f = open(path, "rb")
    except OSError as e:
        return None, _open_error(e)
    with f:
        try:
            with Image.open(f) as image:
                if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                    grey = (np.asarray(image).astype(np.int64) >> 8).clip(0, 255)
                    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2), None
                return np.asarray(image.convert("RGB"), dtype=np.uint8).copy(), None
        except Image.UnidentifiedImageError:
            return None, "cannot decode the image (PIL: not an image format it reads)"
        except Exception as e:  # PIL raises many kinds for a damaged file
            return None, f"cannot decode the image (PIL: {e})"


def predict(args):
    checkpoint = args.checkpoint
    if os.path.isdir(checkpoint):  # a run directory, as the engine's predict takes it
        checkpoint = os.path.join(checkpoint, "last.safetensors")
        if not os.path.exists(checkpoint):
            sys.exit(f"{checkpoint}: no such file (not a run directory, or the run has saved no "
                     "checkpoint yet)")
    tensors, meta = load_safetensors(checkpoint)
    if meta.get("format") != "convmixer-engine checkpoint":
        sys.exit(f"{checkpoint}: not a checkpoint of the engine")
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
    failures = 0
    for path in args.images:
        # The engine's predict: stb_image's pixels (a 1-channel model gets stb's grey level,
        # (77 R + 150 G + 29 B) >> 8), the antialiased bilinear resize in float, then /255 and
        # normalisation. PNGs decode identically here; JPEG decoders differ by a level or two.
        rgb, error = read_image(path)
        if error:
            print(f"predict: cannot read {path}: {error}", file=sys.stderr, flush=True)
            failures += 1
            continue
        pixels = torch.from_numpy(rgb).int()
        if dims["in_channels"] == 1:
            pixels = ((pixels[..., 0] * 77 + pixels[..., 1] * 150 + pixels[..., 2] * 29) >> 8)
            pixels = pixels.unsqueeze(-1)
        x = pixels.float().permute(2, 0, 1).unsqueeze(0)
        if tuple(x.shape[2:]) != (height, width):
            x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear",
                                                antialias=True, align_corners=False)
        x = (x / 255.0 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        with torch.no_grad():
            logits = model(x)[0].double()
        probs = torch.softmax(logits, 0)
        order = torch.argsort(probs, descending=True, stable=True)[:args.top]
        print(json.dumps({"image": path, "logits": logits.tolist(), "probs": probs.tolist(),
                          "top": [{"class": classes[i], "index": int(i), "prob": float(probs[i])}
                                  for i in order.tolist()]}, separators=(",", ":")), flush=True)
    if failures:
        print(f"predict: {failures} of {len(args.images)} images could not be read",
              file=sys.stderr)
        return 1
    return 0


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


def fixture_resize(args):
    torch.manual_seed(1234)
    image = torch.randint(0, 256, (23, 37, 3), dtype=torch.uint8)  # [h, w, c], as stb decodes
    out = {"input": image}
    x = image.float().permute(2, 0, 1).unsqueeze(0)
    for h, w in ((8, 8), (32, 32), (9, 60), (23, 37), (64, 16)):
        y = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True,
                                            align_corners=False)
        out[f"resized_{h}x{w}"] = y[0].permute(1, 2, 0).contiguous()
    meta = dict(torch_version=torch.__version__,
                generator="scripts/pytorch_reference.py fixture-resize")
    save_safetensors(args.out, out, meta)
    print(f"wrote {args.out}: {len(out)} tensors")


def fixture_augment(args):
    import torchvision
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.autoaugment import RandAugment, _apply_op
    torch.manual_seed(1234)
    h, w, bins = 19, 23, (0, 6, 12, 23, 30)
    images = {"rgb": torch.randint(0, 256, (3, h, w), dtype=torch.uint8),
              "grey": torch.randint(0, 256, (1, h, w), dtype=torch.uint8)}
    out = {f"input.{k}": v.permute(1, 2, 0).contiguous() for k, v in images.items()}
    space = RandAugment()._augmentation_space(31, (h, w))
    for op, (magnitudes, signed) in space.items():
        for b in bins:
            magnitude = float(magnitudes[b].item()) if magnitudes.ndim > 0 else 0.0
            out[f"magnitude.{op}.{b}"] = torch.tensor(magnitude, dtype=torch.float32)
            for sign in ((1, -1) if signed else (1,)):
                for name, img in images.items():
                    y = _apply_op(img, op, sign * magnitude, InterpolationMode.NEAREST, None)
                    out[f"{name}.{op}.{b}.{'+' if sign > 0 else '-'}"] = \
                        y.permute(1, 2, 0).contiguous()
    boxes = ((0, 0, h, w), (2, 3, 11, 17), (5, 0, 7, 7), (1, 9, 18, 14))
    for i, (top, left, ch, cw) in enumerate(boxes):
        out[f"resized_crop.{i}.box"] = torch.tensor([top, left, ch, cw], dtype=torch.int64)
        y = TF.resized_crop(images["rgb"], top, left, ch, cw, [h, w], InterpolationMode.BILINEAR)
        out[f"resized_crop.{i}"] = y.permute(1, 2, 0).contiguous()
    out["hflip"] = TF.hflip(images["rgb"]).permute(1, 2, 0).contiguous()
    meta = dict(torch_version=torch.__version__, torchvision_version=torchvision.__version__,
                generator="scripts/pytorch_reference.py fixture-augment")
    save_safetensors(args.out, out, meta)
    print(f"wrote {args.out}: {len(out)} tensors")


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]
# The ConvMixer recipe's CIFAR-10 statistics (engine/data/augment.h, cifar10_mean/cifar10_std).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def set_tf32(allow):
    """Sets TF32 for fp32 matmuls (cuBLAS) and convolutions (cuDNN) explicitly, both ways: PyTorch's
    own defaults differ (matmul off, cuDNN on). PyTorch >= 2.9 has the fp32_precision settings and
    deprecates allow_tf32 (mixing the two can raise), so the new ones are used where they exist."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:  # PyTorch 1.x's matmul object raises AssertionError for an unknown attribute
        new_api = matmul.fp32_precision is not None and cudnn.conv.fp32_precision is not None
    except (AttributeError, AssertionError):
        new_api = False
    if new_api:
        mode = "tf32" if allow else "ieee"
        matmul.fp32_precision = mode
        cudnn.conv.fp32_precision = mode
    else:
        matmul.allow_tf32 = allow
        cudnn.allow_tf32 = allow


def check_device(device):
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {device}: PyTorch {torch.__version__} sees no CUDA device")


def apply_speed_flags(device, args):
    """Applies add_speed_flags' TF32 and cuDNN switches on a CUDA device; refuses --tf32 elsewhere."""
    if device.type == "cuda":
        set_tf32(args.tf32)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    elif args.tf32:
        sys.exit("--tf32 applies to CUDA only")


def autocast_context(device, precision):
    """bf16 autocast around forward and loss (fp32 master weights); fp32: nothing."""
    import contextlib
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def maybe_compile(model, compile_model):
    if not compile_model:
        return model
    if not hasattr(torch, "compile"):
        sys.exit(f"--compile needs PyTorch >= 2.0 (this is {torch.__version__})")
    return torch.compile(model)


def peak_memory_mb(device):
    return torch.cuda.max_memory_allocated(device) / 2**20


def bench(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    check_device(device)
    apply_speed_flags(device, args)
    model = ConvMixer(args.dim, args.depth, args.kernel, args.patch, 10).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.005)
    run = maybe_compile(model, args.compile)
    x = torch.randn(args.batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def step():
        if args.eval:
            with torch.no_grad(), autocast_context(device, args.precision):
                return nn.functional.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, args.precision):
            loss = nn.functional.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
        return loss

    if args.eval:
        model.eval()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    last_loss = loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    mode = ("compile" if args.compile else "eager") + (", eval" if args.eval else "")
    tf32 = ", tf32" if args.tf32 else ""
    print(f"pytorch {torch.__version__} convmixer-{args.dim}/{args.depth} k{args.kernel} "
          f"p{args.patch} batch {args.batch} on {args.device} ({args.precision}, {mode}{tf32}), "
          f"threads={torch.get_num_threads()}: {1000 * seconds / args.steps:.2f} ms/step, "
          f"loss {last_loss:.4f}")
    print(f"step_ms={1000 * seconds / args.steps:.3f}")
    if device.type == "cuda":
        print(f"peak_mem_mb={peak_memory_mb(device):.1f}")
    print(f"{'eval' if args.eval else 'train'}_img_per_s={args.batch * args.steps / seconds:.1f}")


def onecycle_lr(step, lr_max, epochs, steps_per_epoch):
    """engine/optim.cpp OneCycleLinear: np.interp(t, [0, E*2//5, E*4//5, E],
    [0, lr_max, lr_max/20, 0]) at t = epoch + (i + 1) / steps_per_epoch, with the engine's
    handling of repeated knots (few epochs)."""
    xp = [0.0, float(epochs * 2 // 5), float(epochs * 4 // 5), float(epochs)]
    fp = [0.0, lr_max, lr_max / 20, 0.0]
    t = float(step // steps_per_epoch) + float(step % steps_per_epoch + 1) / steps_per_epoch
    if t >= xp[3]:
        return fp[3]
    if t < xp[0]:
        return fp[0]
    j = 2
    while xp[j] > t:
        j -= 1
    if xp[j] == t:
        return fp[j]
    slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
    return slope * (t - xp[j]) + fp[j]


def engine_subset(targets, classes, n):
    """engine/data/dataset.cpp subset(): walking the data set in order (class folders, then file
    names, both sorted), at most ceil(n / classes) images per class, n in all."""
    if n <= 0 or n >= len(targets):
        return list(range(len(targets)))
    cap = (n + max(classes, 1) - 1) // max(classes, 1)
    taken, out = [0] * classes, []
    for i, label in enumerate(targets):
        if len(out) == n:
            break
        if taken[label] < cap:
            taken[label] += 1
            out.append(i)
    return out


class _DecodedImages(torch.utils.data.Dataset):
    """Decodes every image of an ImageFolder once (RGB uint8 HWC, the engine's image-folder reader
    does the same up front); `transform` then works on a PIL image per sample."""

    def __init__(self, pixels, targets, transform):
        self.pixels, self.targets, self.transform = pixels, targets, transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.pixels[i])), self.targets[i]


def _as_list(items):
    return items


class _Decode(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        import numpy as np
        from PIL import Image
        with Image.open(self.samples[i][0]) as image:
            # A numpy array travels back pickled; a tensor would hold a shared-memory file
            # descriptor per image, more than a worker may pass (seen: "received 0 items of
            # ancdata" on the 50,000 CIFAR-10 images).
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def load_split(root, split, subset, workers):
    import torchvision
    folder = torchvision.datasets.ImageFolder(f"{root}/{split}")
    keep = engine_subset(folder.targets, len(folder.classes), subset)
    samples = [folder.samples[i] for i in keep]
    loader = torch.utils.data.DataLoader(_Decode(samples), batch_size=256, num_workers=workers,
                                         collate_fn=_as_list)
    images = [img for chunk in loader for img in chunk]
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        sys.exit(f"{root}/{split}: images differ in size: {sorted(shapes)[:4]}")
    import numpy as np
    pixels = np.stack(images)
    return pixels, [t for _, t in samples], folder.classes


def train_transforms(args, size, mean, std):
    import torchvision.transforms as T
    t = []
    if args.crop == "random":
        t.append(T.RandomCrop(size, padding=4))
    elif args.crop == "resized":
        t.append(T.RandomResizedCrop(size, scale=args.scale, ratio=(1.0, 1.0)))
    elif args.crop != "none":
        sys.exit(f"--crop must be none, random or resized, got '{args.crop}'")
    if args.hflip:
        t.append(T.RandomHorizontalFlip())
    if args.ra_n > 0:
        t.append(T.RandAugment(num_ops=args.ra_n, magnitude=args.ra_m, num_magnitude_bins=31))
    if args.jitter > 0:
        t.append(T.ColorJitter(args.jitter, args.jitter, args.jitter))
    t += [T.ToTensor(), T.Normalize(mean, std)]
    if args.reprob > 0:
        t.append(T.RandomErasing(p=args.reprob, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0))
    return T.Compose(t)


def train(args):
    import numpy as np
    import torchvision.transforms as T
    if args.precision not in ("fp32", "bf16"):
        sys.exit(f"--precision must be fp32 or bf16, got '{args.precision}'")
    if args.epochs <= 0 or args.batch <= 0:
        sys.exit("--epochs and --batch must be positive")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    check_device(device)
    apply_speed_flags(device, args)
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    train_pixels, train_targets, classes = load_split(args.data, "train", args.subset, args.workers)
    test_pixels, test_targets, test_classes = load_split(args.data, "test", args.test_subset,
                                                         args.workers)
    if classes != test_classes:
        sys.exit(f"{args.data}: the train and test splits have different classes")
    if train_pixels.shape[1:] != test_pixels.shape[1:]:
        sys.exit(f"{args.data}: train and test images differ in size")
    height, width = train_pixels.shape[1:3]
    if height % args.patch or width % args.patch:
        sys.exit(f"--patch {args.patch} does not divide the {height}x{width} images")
    # As the trainer: symmetric is 0.5 and 0.5; otherwise CIFAR-10 uses the recipe's statistics,
    # any other data set its own.
    if args.normalize == "symmetric":
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    elif classes == CIFAR10_CLASSES:
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        values = train_pixels.reshape(-1, 3).astype(np.float64) / 255.0
        mean = tuple(float(v) for v in values.mean(0))
        std = tuple(float(max(v, 1e-12)) for v in np.sqrt(
            np.maximum((values ** 2).mean(0) - values.mean(0) ** 2, 1e-12)))
    train_tf = train_transforms(args, (height, width), mean, std)
    test_tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    load_seconds = time.perf_counter() - start

    pin = device.type == "cuda"
    common = dict(batch_size=args.batch, num_workers=args.workers, pin_memory=pin,
                  persistent_workers=args.workers > 0)
    train_loader = torch.utils.data.DataLoader(
        _DecodedImages(train_pixels, train_targets, train_tf), shuffle=True,
        drop_last=args.drop_last, generator=torch.Generator().manual_seed(args.seed), **common)
    test_loader = torch.utils.data.DataLoader(
        _DecodedImages(test_pixels, test_targets, test_tf), shuffle=False, drop_last=False,
        **common)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        sys.exit("no training batch: fewer images than --batch with --drop-last")

    model = ConvMixer(args.dim, args.depth, args.kernel, args.patch, len(classes)).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=args.wd)
    run = maybe_compile(model, args.compile)
    params = sum(p.numel() for p in model.parameters())

    config = dict(
        torch=torch.__version__, device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        model=f"convmixer-{args.dim}/{args.depth} k{args.kernel} p{args.patch}",
        parameters=params, classes=len(classes), image=f"{height}x{width}x3",
        train_images=len(train_targets), test_images=len(test_targets),
        load_seconds=round(load_seconds, 1), epochs=args.epochs, batch=args.batch,
        steps_per_epoch=steps_per_epoch, drop_last=args.drop_last,
        optimizer=f"AdamW(lr={args.lr}, betas=(0.9, 0.999), eps=1e-8, weight_decay={args.wd})",
        recipe=args.recipe,
        schedule="onecycle (engine OneCycleLinear, per step)" if args.schedule == "onecycle"
        else f"constant {args.lr}",
        label_smoothing=args.label_smoothing, clip_grad=args.clip_grad,
        precision=args.precision, compile=args.compile, tf32=args.tf32 if device.type == "cuda"
        else None, cudnn_benchmark=args.cudnn_benchmark if device.type == "cuda" else None,
        memory_format="channels_last", workers=args.workers, seed=args.seed,
        mean=mean, std=std, train_transform=" -> ".join(repr(t) for t in train_tf.transforms),
        test_transform=" -> ".join(repr(t) for t in test_tf.transforms))
    for key, value in config.items():
        print(f"# {key}: {value}")
    sys.stdout.flush()
    metrics = open(args.metrics, "a") if args.metrics else None

    step, peak = 0, 0.0
    for epoch in range(args.epochs):
        model.train()
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen, lr = 0, 0.0
        for images, labels in train_loader:
            lr = (onecycle_lr(step, args.lr, args.epochs, steps_per_epoch)
                  if args.schedule == "onecycle" else args.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            images = images.to(device, non_blocking=True).to(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with autocast_context(device, args.precision):
                logits = run(images)
                loss = nn.functional.cross_entropy(logits, labels,
                                                   label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            step += 1
            n = labels.shape[0]
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += n
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds = time.perf_counter() - epoch_start
        train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen
        if not np.isfinite(train_loss):
            sys.exit(f"training diverged: the loss is not finite in epoch {epoch + 1} "
                     "(try a lower --lr or --clip-grad 1)")
        evaluate_now = (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs
        test_loss = test_acc = None
        if evaluate_now:
            test_loss, test_acc = evaluate(run, model, test_loader, device, args.precision)
        if device.type == "cuda":
            peak = peak_memory_mb(device)
        img_per_s = seen / max(epoch_seconds, 1e-9)
        fmt = (lambda v: f"{v:.6f}") if evaluate_now else (lambda v: "-")
        print(f"epoch {epoch + 1:3d} | train loss {train_loss:.4f} acc {train_acc:.4f} | "
              f"test loss {fmt(test_loss)} acc {fmt(test_acc)} | lr {lr:.6f} | "
              f"{epoch_seconds:.1f} s | {img_per_s:.0f} img/s", flush=True)
        if metrics:
            line = dict(epoch=epoch + 1, step=step, train_loss=train_loss, train_acc=train_acc,
                        lr=lr, epoch_seconds=epoch_seconds, img_per_s=img_per_s)
            if evaluate_now:
                line.update(test_loss=test_loss, test_acc=test_acc)
            if device.type == "cuda":
                line["peak_mem_mb"] = peak
            metrics.write(json.dumps(line) + "\n")
            metrics.flush()
    if metrics:
        metrics.close()
    if device.type == "cuda":
        print(f"peak_mem_mb={peak:.1f}")


def evaluate(run, model, loader, device, precision):
    """Test loss (no label smoothing) and accuracy, as the trainer's evaluate()."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            images = images.to(device, non_blocking=True).to(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with autocast_context(device, precision):
                logits = run(images)
                loss = nn.functional.cross_entropy(logits.float(), labels)
            loss_sum += loss.item() * labels.shape[0]
            correct += int((logits.argmax(1) == labels).sum())
            seen += labels.shape[0]
    model.train()
    return loss_sum / seen, correct / seen


def scale_range(text):
    """train's --scale: "MIN,MAX", or "MIN" up to 1."""
    parts = [float(v) for v in text.split(",")]
    if len(parts) == 1:
        parts.append(1.0)
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"'{text}' is not MIN or MIN,MAX")
    return tuple(parts)


def add_speed_flags(parser):
    """The precision and speed switches that bench and train share."""
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: autocast (bf16) around forward and loss, fp32 master weights")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (PyTorch 2)")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 in fp32 matmuls and convolutions (CUDA; off: true fp32)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark (CUDA; PyTorch's default is off)")


# The engine trainer's named recipes (examples/train_settings.cpp), as defaults of train. labml's
# Adam without weight decay is AdamW with weight_decay 0.
TRAIN_RECIPES = {
    "convmixer-cifar10": {},
    "labml": dict(kernel=7, epochs=150, batch=64, lr=0.00025, wd=0.0, schedule="constant",
                  crop="random", hflip=True, ra_n=0, jitter=0.0, reprob=0.0,
                  normalize="symmetric"),
}


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
    z = sub.add_parser("fixture-resize", help="write the antialiased-resize fixture")
    z.add_argument("--out", default="tests/fixtures/resize_reference.safetensors")
    a = sub.add_parser("fixture-augment", help="write the torchvision augmentation fixture")
    a.add_argument("--out", default="tests/fixtures/augment_reference.safetensors")
    b = sub.add_parser("bench", help="time PyTorch training steps on synthetic data")
    for flag, default in (("dim", 256), ("depth", 8), ("kernel", 5), ("patch", 2), ("batch", 64),
                          ("steps", 5), ("warmup", 2), ("threads", 2)):
        b.add_argument(f"--{flag}", type=int, default=default)
    b.add_argument("--device", default="cpu")
    b.add_argument("--eval", action="store_true",
                   help="time evaluation batches (eval mode, no gradients) instead")
    add_speed_flags(b)
    t = sub.add_parser("train", help="train ConvMixer with the engine trainer's recipe and defaults",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", default="data/cifar10",
                   help="image-folder root: <data>/{train,test}/<class>/*.png|jpg")
    for flag, default, help_text in (
            ("dim", 256, "channels"), ("depth", 8, "ConvMixer layers"),
            ("kernel", 5, "depthwise kernel size (odd)"), ("patch", 2, "patch size"),
            ("epochs", 25, "training epochs"), ("batch", 512, "images per step"),
            ("workers", 8, "data-loader processes"),
            ("subset", 0, "train on this many images only (0: all), spread over the classes "
                          "as the trainer does (the first ceil(N/classes) of each class)"),
            ("test-subset", 0, "evaluate on this many test images only (0: all)"),
            ("eval-every", 1, "evaluate every N epochs (and after the last)"),
            ("ra-n", 2, "RandAugment operations per image (0: off)"),
            ("ra-m", 12, "RandAugment magnitude (0..30)"),
            ("seed", 0, "seed for initialisation, shuffling and augmentation"),
            ("threads", 0, "CPU threads for torch (0: its default)")):
        t.add_argument(f"--{flag}", type=int, default=default, help=help_text)
    for flag, default, help_text in (
            ("lr", 0.05, "peak learning rate (onecycle)"), ("wd", 0.005, "AdamW weight decay"),
            ("label-smoothing", 0.0, "cross-entropy label smoothing"),
            ("clip-grad", 0.0, "clip the gradient norm to this value (0: off)"),
            ("jitter", 0.0, "colour jitter strength (0: off)"),
            ("reprob", 0.0, "random-erasing probability")):
        t.add_argument(f"--{flag}", type=float, default=default, help=help_text)
    t.add_argument("--scale", default=(0.08, 1.0), type=scale_range,
                   help="resized crop: the range of the crop's area fraction, MIN,MAX (or MIN: "
                        "up to 1)")
    t.add_argument("--crop", default="none",
                   help="none, random (pad 4 + crop) or resized (RandomResizedCrop)")
    t.add_argument("--hflip", default=True, type=lambda v: v.lower() in ("1", "true", "yes", "on"),
                   help="random horizontal flips (true/false)")
    t.add_argument("--drop-last", action="store_true",
                   help="drop the last partial batch of each epoch")
    add_speed_flags(t)
    t.add_argument("--device", default="auto", help="auto, cuda or cpu")
    t.add_argument("--metrics", default="", help="append one JSON line per epoch to this file")
    t.add_argument("--schedule", default="onecycle", choices=("onecycle", "constant"),
                   help="the learning rate per step: the recipe's onecycle, or constant --lr")
    t.add_argument("--normalize", default="auto", choices=("auto", "symmetric"),
                   help="auto: CIFAR-10's recipe statistics (other data: its own); symmetric: "
                        "mean 0.5, std 0.5")
    t.add_argument("--recipe", default="convmixer-cifar10", choices=sorted(TRAIN_RECIPES),
                   help="a set of defaults as the engine's train --recipe (flags given override)")
    p = sub.add_parser("predict", help="classify images with an engine checkpoint in PyTorch")
    p.add_argument("--checkpoint", required=True,
                   help="train's last.safetensors, or the run directory holding it")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("images", nargs="+")
    # The recipe's defaults, then the flags given: as the engine's train --recipe.
    known, _ = parser.parse_known_args()
    if known.command == "train":
        t.set_defaults(**TRAIN_RECIPES[known.recipe])
    args = parser.parse_args()
    return {"fixture": fixture, "fixture-resnet": fixture_resnet, "bench": bench, "train": train,
            "fixture-resize": fixture_resize, "fixture-augment": fixture_augment,
            "predict": predict}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
