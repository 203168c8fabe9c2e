"""Slow, obvious twins of the fast ops, used as test oracles.

Each function is the textbook definition written as explicit loops over output positions
and kernel taps (vectorised only over the batch and channel axes so that tests stay fast),
with no im2col, no Numba and no shared helpers with the fast code. Signatures mirror the
fast ops but return plain arrays instead of caches: a backward twin takes the forward
inputs again.
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------


def _pad(x, ph, pw):
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    out[:, :, ph : ph + h, pw : pw + w] = x
    return out


def conv2d(x, w, b, stride, padding, dilation=(1, 1), groups=1):
    """y[n,k,i,j] = b[k] + sum_{c,u,v} w[k,c,u,v] * xpad[n, g*Cg + c, i*sh + u*dh, j*sw + v*dw]."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    kg = k // groups
    xp = _pad(x, ph, pw)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, k, ho, wo), dtype=x.dtype)
    for o in range(k):
        g = o // kg
        for i in range(ho):
            for j in range(wo):
                for u in range(kh):
                    for v in range(kw):
                        patch = xp[:, g * cg : (g + 1) * cg, i * sh + u * dh, j * sw + v * dw]
                        y[:, o, i, j] += patch @ w[o, :, u, v]
        if b is not None:
            y[:, o] += b[o]
    return y


def conv2d_backward(dy, x, w, stride, padding, dilation=(1, 1), groups=1):
    """(dx, dw, db) by scattering every output gradient back along the forward taps."""
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    kg = k // groups
    xp = _pad(x, ph, pw)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    ho, wo = dy.shape[2:]
    for o in range(k):
        g = o // kg
        chans = slice(g * cg, (g + 1) * cg)
        for i in range(ho):
            for j in range(wo):
                d = dy[:, o, i, j]  # [N]
                for u in range(kh):
                    for v in range(kw):
                        r, s = i * sh + u * dh, j * sw + v * dw_
                        dw[o, :, u, v] += d @ xp[:, chans, r, s]
                        dxp[:, chans, r, s] += np.outer(d, w[o, :, u, v])
    dx = dxp[:, :, ph : ph + h, pw : pw + wd]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def conv_transpose2d(x, w, b, stride, padding, output_padding=(0, 0), dilation=(1, 1), groups=1):
    """Scatter definition: every input pixel adds a weighted copy of the kernel,
    ``full[n, co, i*s + u*d, j*s + v*d] += x[n, ci, i, j] * w[ci, co, u, v]``, then crop
    ``padding`` from each side (output_padding keeps extra rows/columns at the end)."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    n, cin, h, wd = x.shape
    _, cog, kh, kw = w.shape
    cig = cin // groups
    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    wo = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    full = np.zeros((n, cog * groups, ho + 2 * ph, wo + 2 * pw), dtype=x.dtype)
    for ci in range(cin):
        g = ci // cig
        for i in range(h):
            for j in range(wd):
                for u in range(kh):
                    for v in range(kw):
                        r, s = i * sh + u * dh, j * sw + v * dw
                        if r < full.shape[2] and s < full.shape[3]:
                            full[:, g * cog : (g + 1) * cog, r, s] += np.outer(
                                x[:, ci, i, j], w[ci, :, u, v]
                            )
    y = full[:, :, ph : ph + ho, pw : pw + wo].copy()
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def conv_transpose2d_backward(
    dy, x, w, stride, padding, output_padding=(0, 0), dilation=(1, 1), groups=1
):
    """(dx, dw, db): gather along the same taps the forward scatter used."""
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    n, cin, h, wd = x.shape
    _, cog, kh, kw = w.shape
    cig = cin // groups
    ho, wo = dy.shape[2:]
    dyf = np.zeros((n, dy.shape[1], ho + 2 * ph, wo + 2 * pw), dtype=dy.dtype)
    dyf[:, :, ph : ph + ho, pw : pw + wo] = dy
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for ci in range(cin):
        g = ci // cig
        co = slice(g * cog, (g + 1) * cog)
        for i in range(h):
            for j in range(wd):
                for u in range(kh):
                    for v in range(kw):
                        r, s = i * sh + u * dh, j * sw + v * dw_
                        if r < dyf.shape[2] and s < dyf.shape[3]:
                            d = dyf[:, co, r, s]  # [N, cog]
                            dx[:, ci, i, j] += d @ w[ci, :, u, v]
                            dw[ci, :, u, v] += x[:, ci, i, j] @ d
    return dx, dw, dy.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------


def pool_output_size(size, kernel, stride, padding, ceil_mode):
    if ceil_mode:
        out = math.ceil((size + 2 * padding - kernel) / stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return (size + 2 * padding - kernel) // stride + 1


def _windows(size, kernel, stride, padding, ceil_mode):
    """Per output index: (start, end) clipped to the input and the divisor length (the
    window clipped to the padded input)."""
    out = []
    for i in range(pool_output_size(size, kernel, stride, padding, ceil_mode)):
        start = i * stride - padding
        end = start + kernel
        divisor = min(end, size + padding) - start
        out.append((max(start, 0), min(end, size), divisor))
    return out


def pool2d(x, kind, kernel, stride, padding=(0, 0), ceil_mode=False):
    """(y, argmax) with argmax = h*W + w of the first maximum (max pooling; else None)."""
    n, c, h, w = x.shape
    rows = _windows(h, kernel[0], stride[0], padding[0], ceil_mode)
    cols = _windows(w, kernel[1], stride[1], padding[1], ceil_mode)
    y = np.zeros((n, c, len(rows), len(cols)), dtype=x.dtype)
    arg = np.zeros(y.shape, dtype=np.int64) if kind == "max" else None
    for a in range(n):
        for ch in range(c):
            for i, (h0, h1, hd) in enumerate(rows):
                for j, (w0, w1, wdv) in enumerate(cols):
                    if kind == "max":
                        best, where = -np.inf, h0 * w + w0
                        for r in range(h0, h1):
                            for s in range(w0, w1):
                                if x[a, ch, r, s] > best:
                                    best, where = x[a, ch, r, s], r * w + s
                        y[a, ch, i, j], arg[a, ch, i, j] = best, where
                    elif kind == "avg":
                        y[a, ch, i, j] = x[a, ch, h0:h1, w0:w1].sum() / (hd * wdv)
                    else:
                        y[a, ch, i, j] = np.sqrt(np.sum(x[a, ch, h0:h1, w0:w1] ** 2))
    return y, arg


def pool2d_backward(dy, x, kind, kernel, stride, padding=(0, 0), ceil_mode=False):
    n, c, h, w = x.shape
    rows = _windows(h, kernel[0], stride[0], padding[0], ceil_mode)
    cols = _windows(w, kernel[1], stride[1], padding[1], ceil_mode)
    y, arg = pool2d(x, kind, kernel, stride, padding, ceil_mode)
    dx = np.zeros_like(x)
    for a in range(n):
        for ch in range(c):
            for i, (h0, h1, hd) in enumerate(rows):
                for j, (w0, w1, wdv) in enumerate(cols):
                    g = dy[a, ch, i, j]
                    if kind == "max":
                        r, s = divmod(int(arg[a, ch, i, j]), w)
                        dx[a, ch, r, s] += g
                    elif kind == "avg":
                        dx[a, ch, h0:h1, w0:w1] += g / (hd * wdv)
                    elif y[a, ch, i, j] != 0:
                        dx[a, ch, h0:h1, w0:w1] += g * x[a, ch, h0:h1, w0:w1] / y[a, ch, i, j]
    return dx


def depth_pool(x, kind, kernel, stride):
    """(y, argmax_c) pooling channels [o*s, o*s + k) at every pixel; argmax_c absolute."""
    n, c, h, w = x.shape
    c_out = (c - kernel) // stride + 1
    y = np.zeros((n, c_out, h, w), dtype=x.dtype)
    arg = np.zeros(y.shape, dtype=np.int64)
    for o in range(c_out):
        win = x[:, o * stride : o * stride + kernel]
        if kind == "max":
            arg[:, o] = o * stride + np.argmax(win, axis=1)  # first maximum wins
            y[:, o] = win.max(axis=1)
        elif kind == "avg":
            y[:, o] = win.mean(axis=1)
        else:
            y[:, o] = np.sqrt((win**2).sum(axis=1))
    return y, arg


def depth_pool_backward(dy, x, kind, kernel, stride):
    y, arg = depth_pool(x, kind, kernel, stride)
    dx = np.zeros_like(x)
    for o in range(y.shape[1]):
        for u in range(kernel):
            ch = o * stride + u
            if kind == "max":
                dx[:, ch] += np.where(arg[:, o] == ch, dy[:, o], 0)
            elif kind == "avg":
                dx[:, ch] += dy[:, o] / kernel
            else:
                safe = np.where(y[:, o] == 0, 1, y[:, o])
                dx[:, ch] += np.where(y[:, o] == 0, 0, dy[:, o] * x[:, ch] / safe)
    return dx


def global_pool(x, kind):
    n, c = x.shape[:2]
    y = np.zeros((n, c), dtype=x.dtype)
    for a in range(n):
        for ch in range(c):
            y[a, ch] = x[a, ch].mean() if kind == "avg" else x[a, ch].max()
    return y


def global_pool_backward(dy, x, kind):
    n, c, h, w = x.shape
    dx = np.zeros_like(x)
    for a in range(n):
        for ch in range(c):
            if kind == "avg":
                dx[a, ch] = dy[a, ch] / (h * w)
            else:
                r, s = divmod(int(np.argmax(x[a, ch])), w)
                dx[a, ch, r, s] = dy[a, ch]
    return dx


# ---------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------


def batchnorm(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    """(y, new_running_mean, new_running_var), channel by channel."""
    c = x.shape[1]
    y = np.zeros_like(x)
    new_mean, new_var = running_mean.copy(), running_var.copy()
    for ch in range(c):
        v = x[:, ch]
        if training:
            m = v.size
            mean = v.sum() / m
            var = ((v - mean) ** 2).sum() / m
            new_mean[ch] = (1 - momentum) * running_mean[ch] + momentum * mean
            new_var[ch] = (1 - momentum) * running_var[ch] + momentum * var * m / (m - 1)
        else:
            mean, var = running_mean[ch], running_var[ch]
        y[:, ch] = gamma[ch] * (v - mean) / np.sqrt(var + eps) + beta[ch]
    return y, new_mean, new_var


def batchnorm_backward(dy, x, gamma, running_mean, running_var, training, eps):
    """(dx, dgamma, dbeta) channel by channel. Training differentiates through the batch
    statistics; eval treats the running statistics as constants."""
    c = x.shape[1]
    dx = np.zeros_like(x)
    dgamma, dbeta = np.zeros(c, x.dtype), np.zeros(c, x.dtype)
    for ch in range(c):
        v, d = x[:, ch], dy[:, ch]
        if training:
            mean, var = v.mean(), ((v - v.mean()) ** 2).mean()
        else:
            mean, var = running_mean[ch], running_var[ch]
        inv = 1 / np.sqrt(var + eps)
        xhat = (v - mean) * inv
        if training:
            dx[:, ch] = gamma[ch] * inv * (d - d.mean() - xhat * (d * xhat).mean())
        else:
            dx[:, ch] = d * gamma[ch] * inv
        dbeta[ch] = d.sum()
        dgamma[ch] = (d * xhat).sum()
    return dx, dgamma, dbeta


def _lrn_window(c, size, ch):
    return range(max(0, c - size // 2), min(ch, c + (size - 1) // 2 + 1))


def lrn(x, size, alpha, beta, k, alpha_over_size):
    a = alpha / size if alpha_over_size else alpha
    y = np.zeros_like(x)
    ch = x.shape[1]
    for c in range(ch):
        s = k + a * sum(x[:, j] ** 2 for j in _lrn_window(c, size, ch))
        y[:, c] = x[:, c] * s ** (-beta)
    return y


def lrn_backward(dy, x, size, alpha, beta, k, alpha_over_size):
    """Chain rule through every (output i, input j) pair of the channel windows."""
    a = alpha / size if alpha_over_size else alpha
    ch = x.shape[1]
    s = [k + a * sum(x[:, j] ** 2 for j in _lrn_window(c, size, ch)) for c in range(ch)]
    dx = np.zeros_like(x)
    for i in range(ch):
        dx[:, i] += dy[:, i] * s[i] ** (-beta)
        for j in _lrn_window(i, size, ch):
            # d y_i / d x_j through s_i = -beta * x_i * s_i**(-beta-1) * 2a x_j
            dx[:, j] += dy[:, i] * (-beta) * x[:, i] * s[i] ** (-beta - 1) * 2 * a * x[:, j]
    return dx


# ---------------------------------------------------------------------------------------
# activations, losses, dropout (element by element)
# ---------------------------------------------------------------------------------------


def _scalar(f, x):
    return np.array([f(float(v)) for v in x.ravel()], dtype=x.dtype).reshape(x.shape)


def _sigmoid(v):
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def activation(name, x, slope=0.01, alpha=1.0):
    if name == "softmax":
        return np.stack([_softmax_row(r) for r in x])
    f = {
        "relu": lambda v: v if v > 0 else 0.0,
        "relu6": lambda v: min(max(v, 0.0), 6.0),
        "leaky_relu": lambda v: v if v > 0 else slope * v,
        "sigmoid": _sigmoid,
        "tanh": math.tanh,
        "elu": lambda v: v if v > 0 else alpha * math.expm1(v),
        "identity": lambda v: v,
        "linear": lambda v: v,
    }[name]
    return _scalar(f, x)


def activation_derivative(name, x, slope=0.01, alpha=1.0):
    """f'(x) elementwise, with PyTorch's choices at the kinks (not for softmax)."""
    f = {
        "relu": lambda v: 1.0 if v > 0 else 0.0,
        "relu6": lambda v: 1.0 if 0 < v < 6 else 0.0,
        "leaky_relu": lambda v: 1.0 if v > 0 else slope,
        "sigmoid": lambda v: _sigmoid(v) * (1 - _sigmoid(v)),
        "tanh": lambda v: 1 - math.tanh(v) ** 2,
        "elu": lambda v: 1.0 if v > 0 else alpha * math.exp(v),
        "identity": lambda v: 1.0,
        "linear": lambda v: 1.0,
    }[name]
    return _scalar(f, x)


def _softmax_row(r):
    e = np.exp(r - r.max())
    return e / e.sum()


def softmax_backward(dy, x):
    """Explicit Jacobian J = diag(y) - y y^T per row (over axis 1)."""
    out = np.zeros_like(x)
    for a in range(x.shape[0]):
        y = _softmax_row(x[a])
        out[a] = (np.diag(y) - np.outer(y, y)) @ dy[a]
    return out


def softmax_cross_entropy(logits, labels):
    n = logits.shape[0]
    loss = 0.0
    d = np.zeros_like(logits)
    for a in range(n):
        r = logits[a]
        m = r.max()
        lse = m + math.log(sum(math.exp(v - m) for v in r))
        loss += lse - r[labels[a]]
        d[a] = _softmax_row(r)
        d[a, labels[a]] -= 1
    return loss / n, d / n


def mse(pred, target):
    diff = (pred - target).ravel()
    return float(sum(v * v for v in diff) / diff.size), 2 * (pred - target) / diff.size


def dropout(x, p, mask):
    return np.where(mask != 0, x / (1 - p), 0).astype(x.dtype)


# ---------------------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------------------


def numerical_gradient(f, x: np.ndarray, dy: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Centred finite differences of ``L = sum(f(x) * dy)`` with respect to ``x``.

    ``x`` is perturbed in place, one element at a time, and restored. Use float64: the
    truncation error is O(h**2) and the rounding error O(eps/h).
    """
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        plus = np.sum(f(x) * dy)
        x[idx] = old - h
        minus = np.sum(f(x) * dy)
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * h)
    return grad
