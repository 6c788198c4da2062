"""Independent float64 ground truth (numpy, per row, no shared code with qstar_kernels)."""
import numpy as np


def norm(logits):
    x = np.asarray(logits, dtype=np.float64)
    fin = np.isfinite(x)
    m = x[fin].max()
    lse = m + np.log(np.exp(x[fin] - m).sum())
    return np.where(fin, x - lse, -np.inf)


def mixture(lp, lt, a):
    """log q_a on the full support (0^0 = 1), as a numpy row."""
    if a == 1:
        x = lp.copy()
    elif a == 0:
        x = lt.copy()
    else:
        both = np.isfinite(lp) & np.isfinite(lt)
        x = np.full_like(lp, -np.inf)
        x[both] = a * lp[both] + (1 - a) * lt[both]
    return norm(x)


def kl(lq, l):
    q = np.exp(lq)
    sel = q > 0
    if np.any(sel & ~np.isfinite(l)):
        return np.inf
    return float(np.sum(q[sel] * (lq[sel] - l[sel])))


def ess(l, lq):
    sel = np.isfinite(l)
    if np.any(sel & ~np.isfinite(lq)):
        return 0.0
    y = 2 * l[sel] - lq[sel]
    m = y.max()
    return float(np.exp(-(m + np.log(np.exp(y - m).sum()))))


def entropy(l):
    p = np.exp(l)
    sel = p > 0
    return float(-np.sum(p[sel] * l[sel]))


def restricted(lp, lt):
    """Both rows renormalised on the common support."""
    both = np.isfinite(lp) & np.isfinite(lt)
    return norm(np.where(both, lp, -np.inf)), norm(np.where(both, lt, -np.inf))


def behaviour(logq, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The exact sampled distribution: temperature -> min-p -> top-k -> top-p (ties by id)."""
    s = np.asarray(logq, dtype=np.float64) / temperature
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    p = np.exp(s - s.max())
    keep = [i for i in order if p[i] >= min_p * 1.0] if min_p > 0 else list(order)
    if top_k > 0:
        keep = keep[:top_k]
    if top_p < 1:
        tot = sum(p[i] for i in keep)
        acc, kept = 0.0, []
        for i in keep:
            if acc >= top_p * tot:
                break
            kept.append(i)
            acc += p[i]
        keep = kept
    out = np.zeros_like(s)
    out[keep] = p[keep]
    return out / out.sum()


def support_set(lt_row, top_k=0, top_p=1.0):
    """pi_t's top-k set, then its nucleus renormalised on it (ties by id): a bool row."""
    return behaviour(norm(lt_row), top_k=top_k, top_p=top_p) > 0


def restrict_to(l_row, keep):
    """A log-prob row renormalised on `keep` (the support restriction)."""
    return norm(np.where(keep, l_row, -np.inf))
