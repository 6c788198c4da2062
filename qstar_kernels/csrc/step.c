/* Fused CPU kernel of qstar_kernels.step: mix (alpha solve + statistics) and sample, per row.

   Plain C11, no torch headers; built on first use by cpu_step.py (gcc/cc, -O3 -march=native,
   -ffp-contract=off, optional -fopenmp) and called through ctypes. The PyTorch reference
   (ref_mix.py, ref_solve.py, ref_sample.py, philox.py) is the spec; this file reproduces its
   math in fp32 with double accumulators. Per row (rows in parallel with OpenMP):

     model pass   max, then sums of exp of both models: lse, entropies, KL pair (2 exps/token)
     solve        kl_symmetry / ess_balance: safeguarded Newton on the common support, one pass
                  per iteration (1 exp/token; 2 and a max pass for ess), same stopping rule as
                  ref_solve.py; the support is read from the logits, or compacted (and pruned
                  like ref_solve._prune) when the two supports differ
     stats pass   max, then the statistics of q at the final alpha (3 exps/token)
     race pass    s = logq / T; Philox4x32-10 for every token of a chunk that can hold the
                  winner, then a threshold on u drops every token whose noise cannot beat the
                  best score so far; only survivors evaluate G = -log(-log u) (exact: race()).
   Truncation (min-p, top-k, top-p) is a threshold on the order (-s, id): a histogram of s
   locates the bin holding the top-k / top-p boundary, a quickselect inside that bin makes it
   exact (truncation()). -inf never enters arithmetic whose result is kept (explicit selects);
   no -ffast-math (it breaks inf handling); exp is a polynomial of our own that vectorises. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define QS_PHILOX_IMPL 2
#elif defined(__AVX2__)
#include <immintrin.h>
#define QS_PHILOX_IMPL 1
#else
#define QS_PHILOX_IMPL 0
#endif

#if defined(__FMA__) || defined(__aarch64__) || defined(__ARM_FEATURE_FMA)
#define QS_FMA(a, b, c) fmaf((a), (b), (c))
#else
#define QS_FMA(a, b, c) ((a) * (b) + (c))
#endif

#define NEG_INF (-INFINITY)
#define CH 512           /* chunk of a row processed by the inner (vectorised) loops */
#define MAX_ITERS 32
#define TOL 1e-5f
#define FEPS 1.1920928955078125e-07f
#define PRUNE 40.0f
#define KL_ZERO 7.62939453125e-06f   /* 64 * 2^-23 */
#define G_MAX 16.635532333438687     /* -log(-log1p(-2^-24)): largest Gumbel noise */
#define U_SCALE 1.1920928955078125e-07f /* 2^-23 */

enum { M_FIXED, M_ENTROPY, M_KL, M_ESS, M_RKL };
enum { O_LP, O_LT, O_LQ, O_LPB, O_ALPHA, O_LOGZ, O_KLP, O_KLT, O_ESSP, O_ESST, O_HP, O_HT, O_HQ,
       O_RES, NOUT };

#define QS_INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- scalar helpers */

QS_INLINE uint32_t f2u(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
QS_INLINE float u2f(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* exp(x) to ~1 ulp (every call site passes x <= ~0: values shifted by a maximum or an upper
   bound); exactly 0 below -87, including -inf (no denormals). Vectorises (no calls). */
QS_INLINE float qs_exp(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    xc = xc > 88.0f ? 88.0f : xc;
    float t = QS_FMA(xc, 1.44269504088896341f, 12582912.0f);  /* 1.5*2^23: round to integer */
    float n = t - 12582912.0f;
    float r = QS_FMA(n, -0.693359375f, xc);
    r = QS_FMA(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = QS_FMA(p, r, 1.3981999507e-3f);
    p = QS_FMA(p, r, 8.3334519073e-3f);
    p = QS_FMA(p, r, 4.1665795894e-2f);
    p = QS_FMA(p, r, 1.6666665459e-1f);
    p = QS_FMA(p, r, 5.0000001201e-1f);
    p = QS_FMA(p, r * r, r) + 1.0f;
    int32_t e = ((int32_t)f2u(t) - 0x4B400000 + 127) << 23;
    float res = p * u2f((uint32_t)e);
    return x < -87.0f ? 0.0f : res;
}

/* Monotone uint32 key of a float (order of the values; -0.0 folded onto +0.0). */
QS_INLINE uint32_t fmono(float s) {
    uint32_t b = f2u(s + 0.0f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
QS_INLINE float fmono_inv(uint32_t m) { return u2f((m & 0x80000000u) ? (m & 0x7FFFFFFFu) : ~m); }

/* ---------------------------------------------------------------- per-row context */

typedef struct {
    const float *xp, *xt;  /* raw logits of the row (fp32) */
    int64_t V;             /* vocab_size: columns >= V are masked */
    /* lp = (xp - offp) - lzp, lt = (xt - offt) - lzt (log_softmax's order of operations) */
    float offp, lzp, offt, lzt;
} row_t;

/* by value: inside loops the constants then live in registers (no aliasing with stores) */
QS_INLINE float lp_of(const row_t R, float xp) { return (xp - R.offp) - R.lzp; }
QS_INLINE float lt_of(const row_t R, float xt) { return (xt - R.offt) - R.lzt; }
/* the loops take the four constants as plain locals (a struct may stay in memory) */
#define ROW_CONSTS(R) const float offp_ = (R).offp, lzp_ = (R).lzp, offt_ = (R).offt, lzt_ = (R).lzt
#define LP(x) (((x) - offp_) - lzp_)
#define LT(x) (((x) - offt_) - lzt_)

/* Inside vectorised loops (no select of one mask by another, which gcc cannot vectorise with
   AVX-512 masks): x is finite iff MIX_FX, and then equals MIX_VAL of the zero-filled lp, lt. */
#define MIX_FX(mode, fp, ft) ((mode) == 1 ? (fp) : (mode) == 0 ? (ft) : ((fp) & (ft)))
#define MIX_VAL(mode, a, b1, lps, lts) \
    ((mode) == 1 ? (lps) : (mode) == 0 ? (lts) : (a) * (lps) + (b1) * (lts))

/* mixture logit a*lp + (1-a)*lt with 0^0 = 1 (ref_mix.mix_logits); mode 1: a == 1, 0: a == 0 */
QS_INLINE float mixl(int mode, float a, float b1, float lp, float lt) {
    if (mode == 1) return lp;
    if (mode == 0) return lt;
    int both = (lp > NEG_INF) & (lt > NEG_INF);
    float sp = both ? lp : 0.0f, st = both ? lt : 0.0f;
    float v = a * sp + b1 * st;
    return both ? v : NEG_INF;
}

typedef struct {
    void *buf;
    size_t cap;
} scratch_t;

static void *scratch_get(scratch_t *S, size_t bytes) {
    if (bytes > S->cap) {
        free(S->buf);
        S->cap = bytes + bytes / 4 + 4096;
        S->buf = malloc(S->cap);
        if (!S->buf) S->cap = 0;
    }
    return S->buf;
}

/* ---------------------------------------------------------------- model pass */

typedef struct {
    double lse_p, lse_t, h_p, h_t, kl_pt, kl_tp;
    double cs_p, cs_t;  /* log mass of S under each model: lp_S = lp - cs */
    int64_t n_s;        /* |S| */
    int mismatch;       /* S differs from the support of either model */
} model_t;

/* Sums in double with groups of 4 elements (j, j+q, j+2q, j+3q of a chunk) pre-added in fp32
   (two roundings of 2^-24, relative to the group's sum): the float->double adds, the costly part
   of the vector loops, drop 4x. Used for the statistics (E[...] terms); the sums that set
   alpha or the normalisers (Z of each model, E_b[d], Z(b)) use QUAD_ADD_D. e0..e3 are the
   terms of the four elements (structs: scalarised by gcc, unlike arrays). */
#define QUAD_ADD(acc, f) ((acc) += (double)((e0.f + e1.f) + (e2.f + e3.f)))
/* the same, all in double: for the sums whose rounding moves alpha (normalisers, E[d]) */
#define QUAD_ADD_D(acc, f) \
    ((acc) += ((double)e0.f + (double)e1.f) + ((double)e2.f + (double)e3.f))

/* model pass terms of one token: w = exp(x - max) and w*(x - max) per model, and the
   cross terms w_p*(xp - xt), -w_t*(xp - xt) on S (KL pair) */
typedef struct { float zp, ap, zt, at, kp, kt; } model_e;
QS_INLINE model_e model_elem(float p, float t, float sp, float st) {
    int fp = p > NEG_INF, ft = t > NEG_INF;
    float up = fp ? p - sp : -1e30f, ut = ft ? t - st : -1e30f;
    float wp = qs_exp(up), wt = qs_exp(ut);
    float dd = (fp & ft) ? p - t : 0.0f;
    model_e e = {wp, wp * up, wt, wt * ut, wp * dd, -(wt * dd)};  /* wp*up = 0 where -inf */
    return e;
}

static void model_pass(row_t *R, int want_kl, model_t *o) {
    const float *xp = R->xp, *xt = R->xt;
    const int64_t V = R->V;
    float mp = NEG_INF, mt = NEG_INF;
    int64_t np = 0, nt = 0, ns = 0;
    for (int64_t c = 0; c < V; c += CH) {
        const int n = (int)(V - c < CH ? V - c : CH);
        const float *p = xp + c, *t = xt + c;
        int cp = 0, ct = 0, cs = 0;
#pragma omp simd reduction(max : mp, mt) reduction(+ : cp, ct, cs)
        for (int j = 0; j < n; j++) {
            mp = p[j] > mp ? p[j] : mp;
            mt = t[j] > mt ? t[j] : mt;
            int fp = p[j] > NEG_INF, ft = t[j] > NEG_INF;
            cp += fp; ct += ft; cs += fp & ft;
        }
        np += cp; nt += ct; ns += cs;
    }
    const float sp = mp > NEG_INF ? mp : 0.0f, st = mt > NEG_INF ? mt : 0.0f;
    double zp = 0, ap = 0, zt = 0, at = 0, kp = 0, kt = 0;
    for (int64_t c = 0; c < V; c += CH) {
        const int n = (int)(V - c < CH ? V - c : CH), q = n / 4;
        const float *p = xp + c, *t = xt + c;
#define MODEL_FOUR \
    model_e e0 = model_elem(p[j], t[j], sp, st), e1 = model_elem(p[j + q], t[j + q], sp, st); \
    model_e e2 = model_elem(p[j + 2 * q], t[j + 2 * q], sp, st); \
    model_e e3 = model_elem(p[j + 3 * q], t[j + 3 * q], sp, st)
        if (want_kl) {
#pragma omp simd reduction(+ : zp, ap, zt, at, kp, kt)
            for (int j = 0; j < q; j++) {
                MODEL_FOUR;
                QUAD_ADD_D(zp, zp); QUAD_ADD(ap, ap); QUAD_ADD_D(zt, zt); QUAD_ADD(at, at);
                QUAD_ADD_D(kp, kp); QUAD_ADD_D(kt, kt);
            }
        } else {
#pragma omp simd reduction(+ : zp, ap, zt, at)
            for (int j = 0; j < q; j++) {
                MODEL_FOUR;
                QUAD_ADD_D(zp, zp); QUAD_ADD(ap, ap); QUAD_ADD_D(zt, zt); QUAD_ADD(at, at);
            }
        }
        for (int j = 4 * q; j < n; j++) {
            model_e e = model_elem(p[j], t[j], sp, st);
            zp += e.zp; ap += e.ap; zt += e.zt; at += e.at; kp += e.kp; kt += e.kt;
        }
    }
    const double lzp = zp > 0 ? log(zp) : 0.0, lzt = zt > 0 ? log(zt) : 0.0;
    R->offp = sp; R->lzp = (float)lzp;
    R->offt = st; R->lzt = (float)lzt;
    o->lse_p = sp + lzp;
    o->lse_t = st + lzt;
    o->h_p = zp > 0 ? lzp - ap / zp : 0.0;
    o->h_t = zt > 0 ? lzt - at / zt : 0.0;
    o->n_s = ns;
    o->mismatch = (ns != np) || (ns != nt);
    o->cs_p = o->cs_t = 0.0;
    o->kl_pt = o->kl_tp = 0.0;
    if (want_kl && !o->mismatch && zp > 0 && zt > 0) {
        /* KL(th||t) = E_th[xp - xt] - lse_p + lse_t */
        o->kl_pt = kp / zp - (o->lse_p - o->lse_t);
        o->kl_tp = kt / zt + (o->lse_p - o->lse_t);
    }
    if (!o->mismatch) return;
    /* Rare path: supports differ. Log-masses of S (in double, from the raw logits) and, for
       reverse_kl, the KL pair with its +inf cases (p > 0 in fp32 where the other model is 0),
       as in ref_solve.kl_pair. */
    double msp = -INFINITY, mst = -INFINITY;
    for (int64_t y = 0; y < V; y++) {
        if (!(xp[y] > NEG_INF) || !(xt[y] > NEG_INF)) continue;
        if (xp[y] > msp) msp = xp[y];
        if (xt[y] > mst) mst = xt[y];
    }
    double sp_ = 0, st_ = 0, k1 = 0, k2 = 0;
    int inf1 = 0, inf2 = 0;
    for (int64_t y = 0; y < V; y++) {
        int fp = xp[y] > NEG_INF, ft = xt[y] > NEG_INF;
        float a = fp ? lp_of(*R, xp[y]) : NEG_INF, b = ft ? lt_of(*R, xt[y]) : NEG_INF;
        if (fp && ft) {
            sp_ += exp((double)xp[y] - msp);
            st_ += exp((double)xt[y] - mst);
            if (want_kl) {
                float pa = expf(a), pb = expf(b);
                k1 += (double)pa * (double)(a - b);
                k2 += (double)pb * (double)(b - a);
            }
        } else if (want_kl) {
            if (fp && expf(a) > 0.0f) inf1 = 1;
            if (ft && expf(b) > 0.0f) inf2 = 1;
        }
    }
    if (ns > 0) {  /* lse over S minus lse over the support */
        o->cs_p = (msp + log(sp_)) - o->lse_p;
        o->cs_t = (mst + log(st_)) - o->lse_t;
    }
    if (want_kl) {
        o->kl_pt = inf1 ? INFINITY : k1;
        o->kl_tp = inf2 ? INFINITY : k2;
    }
}

/* ---------------------------------------------------------------- alpha solvers */

typedef struct {
    /* The common support S: the mixture logit at b is base - b*d with base = lt_S and
       d = lt_S - lp_S. Either computed on the fly from the logits (direct: S is the support of
       both models, the common case: no extra memory traffic) or compacted into scratch arrays
       (supports differ). */
    int direct;
    const float *p0, *p1;  /* direct: xp, xt; else base, d */
    int64_t n;             /* direct: vocab size; else |S| after pruning */
    float offt, lzt, cf;   /* direct: base = (xt - offt) - lzt, d = (xt - xp) - cf */
    float max_lp, max_lt;  /* (upper bounds of) the maxima of lp_S = base - d and lt_S = base */
    double delta;          /* d - delta is lt_S - lp_S: the fp32 rounding of its constant part */
} support_t;

typedef struct { float b, d; } bd_t;

/* base and d of element j of a chunk (p0, p1 already offset to the chunk) */
QS_INLINE bd_t bd_at(const int direct, const float *p0, const float *p1, int j, float offt,
                     float lzt, float cf) {
    bd_t r;
    if (direct) {
        const float p = p0[j], t = p1[j];
        const int fin = (p > NEG_INF) & (t > NEG_INF);  /* false only where both are -inf */
        r.b = fin ? (t - offt) - lzt : -3e38f;
        r.d = fin ? (t - p) - cf : 0.0f;
    } else {
        r.b = p0[j];
        r.d = p1[j];
    }
    return r;
}

/* d is formed as (xt - xp) - C with C = (lse_t + cs_t) - (lse_p + cs_p) in double and its fp32
   rounding kept in delta, so E[d] is not offset by the rounding of the normalisers (an offset
   of 1e-7 in g moves alpha by 1e-7 / Var(d), which is large for near-one-hot rows). */
static void support_direct(const row_t *R, const model_t *M, support_t *S) {
    const double C = (M->lse_t + M->cs_t) - (M->lse_p + M->cs_p);
    S->direct = 1;
    S->p0 = R->xp;
    S->p1 = R->xt;
    S->n = R->V;
    S->offt = R->offt;
    S->lzt = R->lzt;
    S->cf = (float)C;
    S->delta = C - (double)S->cf;
    S->max_lt = -R->lzt;  /* lt at the argmax of xt */
    S->max_lp = -R->lzp;  /* max of base - d, up to rounding: only a shift for exp */
}

/* Supports differ: base = lt_S, d = lt_S - lp_S compacted into scratch; for kl_symmetry drop
   the tokens that cannot matter for b in [0, 1] (max(lp_S, lt_S) < max_y min(lp_S, lt_S) -
   PRUNE, as ref_solve._prune). */
static void support_compact(const row_t *R, const model_t *M, int prune, float *base, float *d,
                            support_t *S) {
    const float *xp = R->xp, *xt = R->xt;
    const int64_t V = R->V;
    const float ct = (float)M->cs_t;
    const double C = (M->lse_t + M->cs_t) - (M->lse_p + M->cs_p);
    const float Cf = (float)C;
    float mlp = NEG_INF, mlt = NEG_INF, lmax = NEG_INF, mmin = INFINITY;
    int64_t n = 0;
    for (int64_t y = 0; y < V; y++) {
        if (!(xp[y] > NEG_INF) || !(xt[y] > NEG_INF)) continue;
        float lts = lt_of(*R, xt[y]) - ct, dj = (xt[y] - xp[y]) - Cf, lps = lts - dj;
        base[n] = lts;
        d[n] = dj;
        n++;
        mlp = lps > mlp ? lps : mlp;
        mlt = lts > mlt ? lts : mlt;
        float lo = lps < lts ? lps : lts, hi = lps < lts ? lts : lps;
        lmax = lo > lmax ? lo : lmax;
        mmin = hi < mmin ? hi : mmin;
    }
    if (prune && n > 0 && mmin < lmax - PRUNE) {
        int64_t k = 0;
        const float floor_ = lmax - PRUNE;
        for (int64_t i = 0; i < n; i++) {
            float lts = base[i], lps = base[i] - d[i];
            if ((lps > lts ? lps : lts) >= floor_) { base[k] = base[i]; d[k] = d[i]; k++; }
        }
        n = k;
    }
    S->direct = 0;
    S->p0 = base;
    S->p1 = d;
    S->n = n;
    S->offt = S->lzt = 0.0f;
    S->cf = Cf;
    S->max_lp = mlp;
    S->max_lt = mlt;
    S->delta = C - (double)Cf;
}

typedef struct { float z, s1, s2; } kl_e;
QS_INLINE kl_e kl_elem(float base, float d, float b, float m) {
    float w = qs_exp((base - b * d) - m);
    float wd = w * d;
    kl_e e = {w, wd, wd * d};
    return e;
}

typedef struct { float z2, e2, zm, em; } ess_e;
QS_INLINE ess_e ess_elem(float base, float d, float b2, float m2, float bm, float mm) {
    float w2 = qs_exp((base - b2 * d) - m2);
    float wm = qs_exp((base - bm * d) - mm);
    ess_e e = {w2, w2 * d, wm, wm * d};
    return e;
}

QS_INLINE kl_e kl_at(const int direct, const float *q0, const float *q1, int j, float offt,
                     float lzt, float cf, float b, float m) {
    bd_t e = bd_at(direct, q0, q1, j, offt, lzt, cf);
    return kl_elem(e.b, e.d, b, m);
}

QS_INLINE ess_e ess_at(const int direct, const float *q0, const float *q1, int j, float offt,
                       float lzt, float cf, float b2, float m2, float bm, float mm) {
    bd_t e = bd_at(direct, q0, q1, j, offt, lzt, cf);
    return ess_elem(e.b, e.d, b2, m2, bm, mm);
}

/* log Z(b), E_b[d], Var_b(d) of w ∝ exp(base - b*d), shift m >= max (else recomputed). */
QS_INLINE void moments_impl(const support_t *S, const int direct, float b, float m, int exact_max,
                            double *lz, double *e1, double *var) {
    const int64_t n = S->n;
    const float offt = S->offt, lzt = S->lzt, cf = S->cf;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (exact_max) {
            float mm = NEG_INF;
            for (int64_t c = 0; c < n; c += CH) {
                const int nn = (int)(n - c < CH ? n - c : CH);
                const float *q0 = S->p0 + c, *q1 = S->p1 + c;
#pragma omp simd reduction(max : mm)
                for (int j = 0; j < nn; j++) {
                    bd_t e = bd_at(direct, q0, q1, j, offt, lzt, cf);
                    float v = e.b - b * e.d;
                    mm = v > mm ? v : mm;
                }
            }
            m = mm;
        }
        double z = 0, s1 = 0, s2 = 0;
        for (int64_t c = 0; c < n; c += CH) {
            const int nn = (int)(n - c < CH ? n - c : CH), q = nn / 4;
            const float *q0 = S->p0 + c, *q1 = S->p1 + c;
#define KL_AT(i) kl_at(direct, q0, q1, (i), offt, lzt, cf, b, m)
#pragma omp simd reduction(+ : z, s1, s2)
            for (int j = 0; j < q; j++) {
                kl_e e0 = KL_AT(j), e1 = KL_AT(j + q), e2 = KL_AT(j + 2 * q), e3 = KL_AT(j + 3 * q);
                QUAD_ADD_D(z, z); QUAD_ADD_D(s1, s1); QUAD_ADD(s2, s2);
            }
            for (int j = 4 * q; j < nn; j++) {
                kl_e e = KL_AT(j);
                z += e.z; s1 += e.s1; s2 += e.s2;
            }
#undef KL_AT
        }
        if (z < 1e-17 && !exact_max) { exact_max = 1; continue; }  /* shift far above the max */
        *lz = m + log(z);
        *e1 = s1 / z;
        double v = s2 / z - (s1 / z) * (s1 / z);
        *var = v > 0 ? v : 0;
        return;
    }
}

static void moments(const support_t *S, float b, float m, double *lz, double *e1, double *var) {
    if (S->direct) moments_impl(S, 1, b, m, 0, lz, e1, var);
    else moments_impl(S, 0, b, m, 0, lz, e1, var);
}

/* log Z at b2 = 2 - a and bm = -a and E[d] there (ess_balance): exponents outside [0, 1], so
   the shifts are true maxima (one pass), then one pass of sums. */
QS_INLINE void ess_impl(const support_t *S, const int direct, float b2, float bm, double out[4]) {
    const int64_t n = S->n;
    const float offt = S->offt, lzt = S->lzt, cf = S->cf;
    float m2 = NEG_INF, mm = NEG_INF;
    for (int64_t c = 0; c < n; c += CH) {
        const int nn = (int)(n - c < CH ? n - c : CH);
        const float *q0 = S->p0 + c, *q1 = S->p1 + c;
#pragma omp simd reduction(max : m2, mm)
        for (int j = 0; j < nn; j++) {
            bd_t e = bd_at(direct, q0, q1, j, offt, lzt, cf);
            float v2 = e.b - b2 * e.d, vm = e.b - bm * e.d;
            m2 = v2 > m2 ? v2 : m2;
            mm = vm > mm ? vm : mm;
        }
    }
    double z2 = 0, e2 = 0, zm = 0, em = 0;
    for (int64_t c = 0; c < n; c += CH) {
        const int nn = (int)(n - c < CH ? n - c : CH), q = nn / 4;
        const float *q0 = S->p0 + c, *q1 = S->p1 + c;
#define ESS_AT(i) ess_at(direct, q0, q1, (i), offt, lzt, cf, b2, m2, bm, mm)
#pragma omp simd reduction(+ : z2, e2, zm, em)
        for (int j = 0; j < q; j++) {
            ess_e e0 = ESS_AT(j), e1 = ESS_AT(j + q), ee2 = ESS_AT(j + 2 * q), e3 = ESS_AT(j + 3 * q);
            z2 += ((double)e0.z2 + (double)e1.z2) + ((double)ee2.z2 + (double)e3.z2);
            e2 += (double)((e0.e2 + e1.e2) + (ee2.e2 + e3.e2));
            zm += ((double)e0.zm + (double)e1.zm) + ((double)ee2.zm + (double)e3.zm);
            em += (double)((e0.em + e1.em) + (ee2.em + e3.em));
        }
        for (int j = 4 * q; j < nn; j++) {
            ess_e e = ESS_AT(j);
            z2 += e.z2; e2 += e.e2; zm += e.zm; em += e.em;
        }
#undef ESS_AT
    }
    out[0] = m2 + log(z2);
    out[1] = e2 / z2;
    out[2] = mm + log(zm);
    out[3] = em / zm;
}

/* f, f', scale of ref_solve: kl_symmetry g(a) = E_a[d]; ess_balance h(a) = lZ(2-a) - lZ(-a).
   With the stored d = d_true + delta: E[d_true] = E[d] - delta, lZ_true(b) = lZ(b) + b*delta. */
static void evaluate(int method, const support_t *S, float a, float *f, float *fp, float *scale) {
    const double delta = S->delta;
    if (method == M_KL) {
        /* base - a*d = a*(base - d) + (1-a)*base <= a*max_lp + (1-a)*max_lt: a safe shift */
        float m = a * S->max_lp + (1.0f - a) * S->max_lt;
        double lz = 0, g = 0, var = 0;
        moments(S, a, m, &lz, &g, &var);
        *f = (float)(g - delta);
        *fp = -(float)var;
        float s = -(float)(lz + a * delta);
        *scale = s > 0 ? s : 0.0f;
    } else {
        const float b2 = 2.0f - a, bm = -a;
        double o[4];
        if (S->direct) ess_impl(S, 1, b2, bm, o);
        else ess_impl(S, 0, b2, bm, o);
        const double lz2 = o[0] + (double)b2 * delta, lzm = o[2] + (double)bm * delta;
        *f = (float)(lz2 - lzm);
        *fp = (float)o[1] - (float)o[3];
        float a2 = fabsf((float)lz2), am = fabsf((float)lzm);
        *scale = a2 > am ? a2 : am;
    }
}

/* Safeguarded Newton from 0.5 in the bracket [0, 1] (ref_solve._newton, fp32 state). */
static float newton(int method, const support_t *S, int *iters, float *f_out, float *scale_out) {
    float a = 0.5f, lo = 0.0f, hi = 1.0f, f = 0, fp = 0, scale = 0;
    int it = 0;
    while (it < MAX_ITERS) {
        evaluate(method, S, a, &f, &fp, &scale);
        it++;
        int conv = (fabsf(f) <= TOL * (1.0f + scale)) || (hi - lo <= 2.0f * FEPS * hi) ||
                   (it == MAX_ITERS);
        if (f > 0) lo = a;
        if (f < 0) hi = a;
        if (conv) break;
        float cand = a - f / (fp < 0 ? fp : -1.0f);
        int ok = (fp < 0) && (cand > lo) && (cand < hi) && isfinite(cand);
        a = ok ? cand : 0.5f * (lo + hi);
    }
    *iters = it;
    *f_out = f;
    *scale_out = scale;
    return a;
}

QS_INLINE float ratio_or_half(float num, float den, float zero) {
    int ni = isinf(num), di = isinf(den);
    if (ni && di) return 0.5f;
    if (ni) return 1.0f;
    if (di) return 0.0f;
    float tot = num + den;
    return tot > zero ? num / (tot > 0 ? tot : 1.0f) : 0.5f;
}

/* ---------------------------------------------------------------- statistics of q */

typedef struct {
    float log_z;       /* fp32 log Z: logq = x - log_z */
    float mx, mn;      /* max and min (over finite values) of the mixture logit */
    int64_t arg;       /* first index with x == mx (-1 if none) */
    double kl_p, kl_t, ess_p, ess_t, h_q, log_z_d;
} stats_t;

/* Maxima of x, 2lp - x, 2lt - x over one chunk and the flags of the +inf / 0 cases. */
QS_INLINE void stats_max_chunk(const row_t R, const int mode, const float a, const float b1,
                               int64_t c, int n, float *mx, float *mn, float *m1, float *m2,
                               int *e0p, int *e0t, float *ipx, float *itx) {
    const float *p = R.xp + c, *t = R.xt + c;
    ROW_CONSTS(R);
    float lmx = NEG_INF, lmn = INFINITY, lm1 = NEG_INF, lm2 = NEG_INF, lip = NEG_INF, lit = NEG_INF;
    int le0p = 0, le0t = 0;
#pragma omp simd reduction(max : lmx, lm1, lm2, lip, lit) reduction(min : lmn) reduction(| : le0p, le0t)
    for (int j = 0; j < n; j++) {
        float lp = LP(p[j]), lt = LT(t[j]);
        int fp = lp > NEG_INF, ft = lt > NEG_INF;
        int fx = MIX_FX(mode, fp, ft);
        float lps = fp ? lp : 0.0f, lts = ft ? lt : 0.0f;
        float xs = MIX_VAL(mode, a, b1, lps, lts);
        float x = fx ? xs : NEG_INF;
        float y1 = (fp & fx) ? 2.0f * lps - xs : NEG_INF;
        float y2 = (ft & fx) ? 2.0f * lts - xs : NEG_INF;
        lmx = x > lmx ? x : lmx;
        float xn = fx ? xs : INFINITY;
        lmn = xn < lmn ? xn : lmn;
        lm1 = y1 > lm1 ? y1 : lm1;
        lm2 = y2 > lm2 ? y2 : lm2;
        le0p |= fp & !fx;
        le0t |= ft & !fx;
        float xip = (fx & !fp) ? x : NEG_INF, xit = (fx & !ft) ? x : NEG_INF;
        lip = xip > lip ? xip : lip;
        lit = xit > lit ? xit : lit;
    }
    *mx = lmx; *mn = lmn; *m1 = lm1; *m2 = lm2; *e0p = le0p; *e0t = le0t; *ipx = lip; *itx = lit;
}

/* Sums of one chunk (shifts sx, s1, s2 = the maxima): Z, E[x - sx], E[x - lp], E[x - lt]
   (unnormalised) and the ESS sums. */
typedef struct { float z, ex, dd, z1, z2; } stats_e;
QS_INLINE stats_e stats_elem(const int mode, float p, float t, float offp_, float lzp_,
                             float offt_, float lzt_, float a, float b1, float sx, float s1,
                             float s2) {
    float lp = LP(p), lt = LT(t);
    int fp = lp > NEG_INF, ft = lt > NEG_INF;
    int fx = MIX_FX(mode, fp, ft);
    float lps = fp ? lp : 0.0f, lts = ft ? lt : 0.0f;
    float xs = MIX_VAL(mode, a, b1, lps, lts);
    float u = fx ? xs - sx : -1e30f;
    float w = qs_exp(u);
    float y1 = (fp & fx) ? (2.0f * lps - xs) - s1 : -1e30f;
    float y2 = (ft & fx) ? (2.0f * lts - xs) - s2 : -1e30f;
    /* w*u = 0 where x = -inf (w = 0 exactly, u = -1e30); x - lp = (1-a)(lt - lp) and
       x - lt = -a(lt - lp): one sum (dd) serves both KLs */
    stats_e e = {w, w * u, w * (lts - lps), qs_exp(y1), qs_exp(y2)};
    return e;
}

QS_INLINE void stats_sum_chunk(const row_t R, const int mode, const float a, const float b1,
                               const float sx, const float s1, const float s2, int64_t c, int n,
                               double acc[6]) {
    const float *p = R.xp + c, *t = R.xt + c;
    ROW_CONSTS(R);
    const int q = n / 4;
    double z = 0, ex = 0, dd = 0, z1 = 0, z2 = 0;
#define ST(i) stats_elem(mode, p[i], t[i], offp_, lzp_, offt_, lzt_, a, b1, sx, s1, s2)
#pragma omp simd reduction(+ : z, ex, dd, z1, z2)
    for (int j = 0; j < q; j++) {
        /* one element at a time into fp32 partial sums (keeps register pressure low) */
        stats_e e = ST(j), f;
        f = ST(j + q);
        e.z += f.z; e.ex += f.ex; e.dd += f.dd; e.z1 += f.z1; e.z2 += f.z2;
        f = ST(j + 2 * q);
        e.z += f.z; e.ex += f.ex; e.dd += f.dd; e.z1 += f.z1; e.z2 += f.z2;
        f = ST(j + 3 * q);
        e.z += f.z; e.ex += f.ex; e.dd += f.dd; e.z1 += f.z1; e.z2 += f.z2;
        z += e.z; ex += e.ex; dd += e.dd; z1 += e.z1; z2 += e.z2;
    }
    for (int j = 4 * q; j < n; j++) {
        stats_e e = ST(j);
        z += e.z; ex += e.ex; dd += e.dd; z1 += e.z1; z2 += e.z2;
    }
#undef ST
    const double ep = mode == 1 ? 0.0 : mode == 0 ? dd : (double)b1 * dd;
    const double et = mode == 0 ? 0.0 : mode == 1 ? -dd : -(double)a * dd;
    acc[0] += z; acc[1] += ex; acc[2] += ep; acc[3] += et; acc[4] += z1; acc[5] += z2;
}

QS_INLINE void stats_mode(const row_t *Rp, const int mode, const float a, stats_t *o) {
    const row_t R = *Rp;
    const int64_t V = R.V;
    const float b1 = 1.0f - a;
    float mx = NEG_INF, mn = INFINITY, m1 = NEG_INF, m2 = NEG_INF, ipx = NEG_INF, itx = NEG_INF;
    int e0p = 0, e0t = 0;
    int64_t argc = -1;
    for (int64_t c = 0; c < V; c += CH) {
        const int n = (int)(V - c < CH ? V - c : CH);
        float cmx, cmn, cm1, cm2, cip, cit;
        int c0p, c0t;
        stats_max_chunk(R, mode, a, b1, c, n, &cmx, &cmn, &cm1, &cm2, &c0p, &c0t, &cip, &cit);
        if (cmx > mx) { mx = cmx; argc = c; }
        mn = cmn < mn ? cmn : mn;
        m1 = cm1 > m1 ? cm1 : m1;
        m2 = cm2 > m2 ? cm2 : m2;
        ipx = cip > ipx ? cip : ipx;
        itx = cit > itx ? cit : itx;
        e0p |= c0p; e0t |= c0t;
    }
    o->mx = mx;
    o->mn = mn;
    o->arg = -1;
    if (argc >= 0) {
        for (int64_t y = argc; y < V; y++) {
            float x = mixl(mode, a, b1, lp_of(R, R.xp[y]), lt_of(R, R.xt[y]));
            if (x == mx) { o->arg = y; break; }
        }
    }
    const float sx = mx > NEG_INF ? mx : 0.0f, s1 = m1 > NEG_INF ? m1 : 0.0f,
                s2 = m2 > NEG_INF ? m2 : 0.0f;
    double acc[6] = {0, 0, 0, 0, 0, 0};
    for (int64_t c = 0; c < V; c += CH) {
        const int n = (int)(V - c < CH ? V - c : CH);
        stats_sum_chunk(R, mode, a, b1, sx, s1, s2, c, n, acc);
    }
    const double z = acc[0], ex = acc[1], ep = acc[2], et = acc[3], z1 = acc[4], z2 = acc[5];
    const double lz = z > 0 ? sx + log(z) : -INFINITY;
    o->log_z_d = lz;
    o->log_z = (float)lz;
    if (!(z > 0)) {
        o->kl_p = o->kl_t = o->h_q = 0;
        o->ess_p = o->ess_t = 0;
        return;
    }
    o->h_q = log(z) - ex / z;
    /* KL(q||pi) = E_q[x - l] - log Z; +inf where q > 0 (fp32) = pi */
    o->kl_p = (ipx > NEG_INF && expf(ipx - o->log_z) > 0.0f) ? INFINITY : ep / z - lz;
    o->kl_t = (itx > NEG_INF && expf(itx - o->log_z) > 0.0f) ? INFINITY : et / z - lz;
    /* ESS = 1 / sum pi^2/q = exp(-(lse(2l - x) + log Z)); 0 where pi > 0 = q */
    o->ess_p = e0p ? 0.0 : exp(-((double)s1 + log(z1) + lz));
    o->ess_t = e0t ? 0.0 : exp(-((double)s2 + log(z2) + lz));
}

/* Statistics of q at a (ref_mix.statistics); mode: 1 if a == 1, 0 if a == 0, else 2. */
static void stats_pass(const row_t *R, int mode, float a, stats_t *o) {
    if (mode == 1) stats_mode(R, 1, a, o);
    else if (mode == 0) stats_mode(R, 0, a, o);
    else stats_mode(R, 2, a, o);
}

/* ---------------------------------------------------------------- Philox4x32-10 */

#define PH_RA 0xD2511F53u
#define PH_RB 0xCD9E8D57u
#define PH_KA 0x9E3779B9u
#define PH_KB 0xBB67AE85u

typedef struct {
    uint32_t c1, c2, c3;
    uint32_t k0[10], k1[10];
    /* after rounds 1-2 with c1, c2, c3 fixed: constants of the partially evaluated state */
    uint32_t r1_c0, r1_c1, r2_ha, r2_la;
} philox_t;

static void philox_init(philox_t *P, uint64_t seed, uint64_t key, uint64_t pos) {
    P->c1 = (uint32_t)pos;
    P->c2 = (uint32_t)key;
    P->c3 = (uint32_t)(key >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int i = 0; i < 10; i++) {
        P->k0[i] = k0; P->k1[i] = k1;
        k0 += PH_KA; k1 += PH_KB;
    }
    /* round 1: b = c2*RB is the same for every token */
    uint64_t pb = (uint64_t)P->c2 * PH_RB;
    P->r1_c0 = (uint32_t)(pb >> 32) ^ P->c1 ^ P->k0[0];  /* c0 after round 1 */
    P->r1_c1 = (uint32_t)pb;                             /* c1 after round 1 */
    /* round 2: a = c0*RA with c0 = r1_c0, again a constant */
    uint64_t pa = (uint64_t)P->r1_c0 * PH_RA;
    P->r2_ha = (uint32_t)(pa >> 32);
    P->r2_la = (uint32_t)pa;
}

/* First output word for counter (y, c1, c2, c3): reference implementation (philox.py). */
static uint32_t philox_one(const philox_t *P, uint32_t y) {
    uint32_t c0 = y, c1 = P->c1, c2 = P->c2, c3 = P->c3;
    for (int i = 0; i < 10; i++) {
        uint64_t pa = (uint64_t)c0 * PH_RA, pb = (uint64_t)c2 * PH_RB;
        uint32_t n0 = (uint32_t)(pb >> 32) ^ c1 ^ P->k0[i];
        uint32_t n2 = (uint32_t)(pa >> 32) ^ c3 ^ P->k1[i];
        c1 = (uint32_t)pb; c3 = (uint32_t)pa; c0 = n0; c2 = n2;
    }
    return c0;
}

#if QS_PHILOX_IMPL == 2
/* 32x32->64 products of 16 lanes: even lanes and (swapped) odd lanes, then the high and low
   words re-interleaved with one two-source permute each (balances the multiply port). */
#define PERM_HI _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31)
#define PERM_LO _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)
QS_INLINE __m512i mul_hilo16(__m512i a, __m512i k, __m512i *lo) {
    const __m512i pe = _mm512_mul_epu32(a, k);
    const __m512i po = _mm512_mul_epu32(_mm512_shuffle_epi32(a, (_MM_PERM_ENUM)0xB1), k);
    *lo = _mm512_permutex2var_epi32(pe, PERM_LO, po);
    return _mm512_permutex2var_epi32(pe, PERM_HI, po);
}
QS_INLINE __m512i mul_hi16(__m512i a, __m512i k) {
    const __m512i pe = _mm512_mul_epu32(a, k);
    const __m512i po = _mm512_mul_epu32(_mm512_shuffle_epi32(a, (_MM_PERM_ENUM)0xB1), k);
    return _mm512_permutex2var_epi32(pe, PERM_HI, po);
}
#define XOR3(a, b, c) _mm512_ternarylogic_epi32((a), (b), (c), 0x96)
#elif QS_PHILOX_IMPL == 1
QS_INLINE __m256i mul_hilo8(__m256i a, __m256i k, __m256i *lo) {
    const __m256i pe = _mm256_mul_epu32(a, k);
    const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), k);
    *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
    return _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}
QS_INLINE __m256i mul_hi8(__m256i a, __m256i k) {
    const __m256i pe = _mm256_mul_epu32(a, k);
    const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), k);
    return _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}
#define XOR3(a, b, c) _mm256_xor_si256(_mm256_xor_si256((a), (b)), (c))
#endif

/* r[j] = philox word of token y0 + j, j < n rounded up to 16 (r has room for that). */
static void philox_chunk(const philox_t *P, uint32_t y0, int n, uint32_t *r) {
#if QS_PHILOX_IMPL == 2
    const __m512i A = _mm512_set1_epi32((int)PH_RA), Bk = _mm512_set1_epi32((int)PH_RB);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i r1c1 = _mm512_set1_epi32((int)P->r1_c1);
    const __m512i c3v = _mm512_set1_epi32((int)P->c3), r2ha = _mm512_set1_epi32((int)P->r2_ha);
    const __m512i r2la = _mm512_set1_epi32((int)P->r2_la);
    for (int j = 0; j < n; j += 16) {
        __m512i c0, c1, c2, c3, la, lb, ha, hb;
        /* round 1: c0' = const, c1' = const, c2' = hi(y*RA)^c3^k1, c3' = lo(y*RA) */
        __m512i y = _mm512_add_epi32(iota, _mm512_set1_epi32((int)(y0 + (uint32_t)j)));
        ha = mul_hilo16(y, A, &la);
        c2 = XOR3(ha, c3v, _mm512_set1_epi32((int)P->k1[0]));
        c3 = la;
        /* round 2: a = r1_c0*RA constant; b = c2*RB */
        hb = mul_hilo16(c2, Bk, &lb);
        c0 = XOR3(hb, r1c1, _mm512_set1_epi32((int)P->k0[1]));
        c1 = lb;
        c2 = XOR3(r2ha, c3, _mm512_set1_epi32((int)P->k1[1]));
        c3 = r2la;
        for (int i = 2; i < 9; i++) {
            ha = mul_hilo16(c0, A, &la);
            hb = mul_hilo16(c2, Bk, &lb);
            c0 = XOR3(hb, c1, _mm512_set1_epi32((int)P->k0[i]));
            c2 = XOR3(ha, c3, _mm512_set1_epi32((int)P->k1[i]));
            c1 = lb;
            c3 = la;
        }
        /* round 10: only c0 = hi(c2*RB) ^ c1 ^ k0 is needed */
        hb = mul_hi16(c2, Bk);
        c0 = XOR3(hb, c1, _mm512_set1_epi32((int)P->k0[9]));
        _mm512_storeu_si512((void *)(r + j), c0);
    }
#elif QS_PHILOX_IMPL == 1
    const __m256i A = _mm256_set1_epi32((int)PH_RA), Bk = _mm256_set1_epi32((int)PH_RB);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i r1c1 = _mm256_set1_epi32((int)P->r1_c1);
    const __m256i c3v = _mm256_set1_epi32((int)P->c3), r2ha = _mm256_set1_epi32((int)P->r2_ha);
    const __m256i r2la = _mm256_set1_epi32((int)P->r2_la);
    for (int j = 0; j < n; j += 8) {
        __m256i c0, c1, c2, c3, la, lb, ha, hb;
        __m256i y = _mm256_add_epi32(iota, _mm256_set1_epi32((int)(y0 + (uint32_t)j)));
        ha = mul_hilo8(y, A, &la);
        c2 = XOR3(ha, c3v, _mm256_set1_epi32((int)P->k1[0]));
        c3 = la;
        hb = mul_hilo8(c2, Bk, &lb);
        c0 = XOR3(hb, r1c1, _mm256_set1_epi32((int)P->k0[1]));
        c1 = lb;
        c2 = XOR3(r2ha, c3, _mm256_set1_epi32((int)P->k1[1]));
        c3 = r2la;
        for (int i = 2; i < 9; i++) {
            ha = mul_hilo8(c0, A, &la);
            hb = mul_hilo8(c2, Bk, &lb);
            c0 = XOR3(hb, c1, _mm256_set1_epi32((int)P->k0[i]));
            c2 = XOR3(ha, c3, _mm256_set1_epi32((int)P->k1[i]));
            c1 = lb;
            c3 = la;
        }
        hb = mul_hi8(c2, Bk);
        c0 = XOR3(hb, c1, _mm256_set1_epi32((int)P->k0[9]));
        _mm256_storeu_si256((__m256i *)(r + j), c0);
    }
#else
    for (int j = 0; j < n; j++) r[j] = philox_one(P, y0 + (uint32_t)j);
#endif
}

QS_INLINE float gumbel_of(uint32_t r) {
    float u = ((float)(r >> 9) + 0.5f) * U_SCALE;
    return -logf(-logf(u));
}

/* Smallest k = r >> 9 whose noise G(u_k) can exceed t (conservative: a few below the exact
   bound); 0 when every token can, 2^23 when none can. */
static uint32_t kmin_for(double t) {
    if (!(t > -30.0)) return 0;
    if (t > G_MAX + 1e-3) return 8388608u;
    double k = floor(exp(-exp(-t)) * 8388608.0 - 0.5) - 2.0;
    if (k <= 0) return 0;
    if (k >= 8388608.0) return 8388608u;
    return (uint32_t)k;
}

/* ---------------------------------------------------------------- sampling */

typedef struct {
    float temp;        /* > 0 */
    int truncated;     /* kept = finite s with key >= kstar */
    uint64_t kstar;
    float smax;        /* max of s (over kept tokens) */
    float bin_res;     /* histogram bins per unit of s (truncation search) */
    int need_lse;      /* sum exp(s - smax) in the race; else lse(s) = lse_known */
    double lse_known;  /* 0 for T = 1 untruncated (s = logq), or set by truncation() */
} samp_t;

/* s = logq / T of one chunk, -inf where not kept. Returns the chunk max. */
QS_INLINE float s_chunk_m(const row_t R, const int mode, const float a, const float b1,
                          const float log_z, const samp_t *P, int64_t c, int n,
                          float *restrict s) {
    const float *restrict p = R.xp + c, *restrict t = R.xt + c;
    ROW_CONSTS(R);
    const float temp = P->temp;
    float cm = NEG_INF;
    if (!P->truncated) {
        if (temp == 1.0f) {
#pragma omp simd reduction(max : cm)
            for (int j = 0; j < n; j++) {
                float x = mixl(mode, a, b1, LP(p[j]), LT(t[j]));
                float v = x - log_z;
                s[j] = v;
                cm = v > cm ? v : cm;
            }
        } else {
#pragma omp simd reduction(max : cm)
            for (int j = 0; j < n; j++) {
                float x = mixl(mode, a, b1, LP(p[j]), LT(t[j]));
                float v = x > NEG_INF ? (x - log_z) / temp : NEG_INF;  /* T = inf: no NaN */
                s[j] = v;
                cm = v > cm ? v : cm;
            }
        }
    } else {
        const uint32_t ks = (uint32_t)(P->kstar >> 32), kl = (uint32_t)P->kstar;
        const uint32_t yb = 0xFFFFFFFFu - (uint32_t)c;
#pragma omp simd reduction(max : cm)
        for (int j = 0; j < n; j++) {
            float x = mixl(mode, a, b1, LP(p[j]), LT(t[j]));
            float v = x > NEG_INF ? (x - log_z) / temp : NEG_INF;
            uint32_t m = fmono(v), il = yb - (uint32_t)j;
            int kept = (v > NEG_INF) & ((m > ks) | ((m == ks) & (il >= kl)));
            v = kept ? v : NEG_INF;
            s[j] = v;
            cm = v > cm ? v : cm;
        }
    }
    return cm;
}

static float s_chunk(const row_t *R, int mode, float a, float b1, float log_z, const samp_t *P,
                     int64_t c, int n, float *s) {
    if (mode == 1) return s_chunk_m(*R, 1, a, b1, log_z, P, c, n, s);
    if (mode == 0) return s_chunk_m(*R, 0, a, b1, log_z, P, c, n, s);
    return s_chunk_m(*R, 2, a, b1, log_z, P, c, n, s);
}

/* ---- exact selection of the truncation threshold on the candidates' keys (descending) */

static void swap_u64(uint64_t *a, uint64_t *b) { uint64_t t = *a; *a = *b; *b = t; }

/* Rearranges keys[0..n) so that keys[0..k) are the k largest; returns the k-th largest. */
static uint64_t select_kth(uint64_t *keys, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        /* median of three, as pivot, moved to hi */
        if (keys[mid] < keys[lo]) swap_u64(&keys[mid], &keys[lo]);
        if (keys[hi] < keys[lo]) swap_u64(&keys[hi], &keys[lo]);
        if (keys[hi] < keys[mid]) swap_u64(&keys[hi], &keys[mid]);
        swap_u64(&keys[mid], &keys[hi]);  /* pivot = median at hi */
        const uint64_t pv = keys[hi];
        int64_t st = lo;
        for (int64_t i = lo; i < hi; i++)
            if (keys[i] > pv) { swap_u64(&keys[i], &keys[st]); st++; }
        swap_u64(&keys[st], &keys[hi]);
        if (st == want) return keys[st];
        if (st < want) lo = st + 1; else hi = st - 1;
    }
    return keys[lo];
}

/* Smallest key K such that the mass of keys > K is < target (top-p: keep while the mass
   strictly before a token is < p * total). keys/w are permuted; *kept = mass of keys >= K. */
static void swap_kw(uint64_t *keys, double *w, int64_t i, int64_t j) {
    uint64_t t = keys[i];
    keys[i] = keys[j];
    keys[j] = t;
    double tw = w[i];
    w[i] = w[j];
    w[j] = tw;
}

static uint64_t select_mass(uint64_t *keys, double *w, int64_t n, double target, double *kept) {
    int64_t lo = 0, hi = n;  /* unresolved range; everything above it is kept, mass acc */
    double acc = 0;
    uint64_t best = UINT64_MAX;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2, last = hi - 1;
        /* median of three, as pivot, moved to last */
        if (keys[mid] < keys[lo]) swap_kw(keys, w, mid, lo);
        if (keys[last] < keys[lo]) swap_kw(keys, w, last, lo);
        if (keys[last] < keys[mid]) swap_kw(keys, w, last, mid);
        swap_kw(keys, w, mid, last);
        const uint64_t pv = keys[last];
        int64_t st = lo;
        double above = 0;
        for (int64_t i = lo; i < last; i++) {
            if (keys[i] > pv) {
                above += w[i];
                swap_kw(keys, w, i, st);
                st++;
            }
        }
        swap_kw(keys, w, st, last);
        if (acc + above < target) {  /* pivot kept; continue below it */
            best = pv;
            acc += above + w[st];
            lo = st + 1;
        } else {
            hi = st;
        }
    }
    *kept = acc;  /* mass of the kept keys (>= best) */
    return best;
}

QS_INLINE uint64_t key_of(float s, int64_t y) {
    return ((uint64_t)fmono(s) << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)y);
}

#define NBIN 4096  /* histogram of s over [s_min, s_max], for the truncation search */

/* bins (monotone in s: higher s, lower or equal bin) and weights exp(s - smax) of one chunk;
   bin -1 for tokens that min-p (s < fl) or -inf removes */
QS_INLINE void bin_chunk(const float *s, int n, float smax, float res, float fl, int32_t *bi,
                         float *wv) {
#pragma omp simd
    for (int j = 0; j < n; j++) {
        float sj = s[j];
        int ok = (sj > NEG_INF) & (sj >= fl);
        float dlt = (smax - (ok ? sj : smax)) * res;
        dlt = dlt < (float)(NBIN - 1) ? dlt : (float)(NBIN - 1);
        bi[j] = ok ? (int32_t)dlt : -1;
        wv[j] = qs_exp(sj - smax);
    }
}

/* keys (and weights) of the kept tokens in bin b: returns their number */
static int64_t collect_bin(const row_t *R, int mode, float a, float log_z, const samp_t *all,
                           float fl, int b, float *sbuf, uint64_t *keys, double *w) {
    const int64_t V = R->V;
    int32_t bi[CH];
    float wv[CH];
    int64_t n = 0;
    for (int64_t c = 0; c < V; c += CH) {
        const int m = (int)(V - c < CH ? V - c : CH);
        s_chunk(R, mode, a, 1.0f - a, log_z, all, c, m, sbuf);
        bin_chunk(sbuf, m, all->smax, all->bin_res, fl, bi, wv);
        for (int j = 0; j < m; j++) {
            if (bi[j] != b) continue;
            keys[n] = key_of(sbuf[j], c + j);
            w[n] = wv[j];
            n++;
        }
    }
    return n;
}

/* kstar of min-p -> top-k -> top-p (prefixes of the order (-s, id)) and the top token (the
   race's seed). One pass builds a histogram of counts and masses over bins of s; top-k and
   top-p then resolve exactly inside the one bin holding their boundary (quickselect on the
   keys of that bin only). Returns 0 on OOM. */
static int truncation(const row_t *R, int mode, float a, float log_z, samp_t *P, int64_t top_k,
                      float top_p, float min_p, scratch_t *scr, float *sbuf,
                      int64_t *seed_y) {
    const int64_t V = R->V;
    const float smax = P->smax;
    float fl = NEG_INF;
    uint64_t kmin = 0;
    if (min_p > 0) {
        fl = smax + logf(min_p);  /* min-p keeps s >= s_max + log(min_p) */
        kmin = (uint64_t)fmono(fl) << 32;
    }
    P->truncated = 1;
    P->kstar = kmin;
    if (top_k <= 0 && !(top_p < 1.0f)) return 1;  /* min-p only: the argmax seed is kept */
    char *mem = (char *)scratch_get(scr, NBIN * 16 + (size_t)V * 16);
    if (!mem) return 0;
    int64_t *cnt = (int64_t *)mem;
    double *mass = (double *)(mem + NBIN * 8);
    uint64_t *keys = (uint64_t *)(mem + NBIN * 16);
    double *w = (double *)(keys + V);
    memset(mem, 0, NBIN * 16);
    samp_t all = *P;
    all.truncated = 0;
    int32_t bi[CH];
    float wv[CH];
    int64_t n = 0, seed = -1;
    for (int64_t c = 0; c < V; c += CH) {
        const int m = (int)(V - c < CH ? V - c : CH);
        float cm = s_chunk(R, mode, a, 1.0f - a, log_z, &all, c, m, sbuf);
        bin_chunk(sbuf, m, smax, P->bin_res, fl, bi, wv);
        for (int j = 0; j < m; j++) {
            const int32_t b = bi[j];
            if (b < 0) continue;
            cnt[b]++;
            mass[b] += wv[j];
            n++;
        }
        if (seed < 0 && cm == smax) {  /* top token: first index with s == s_max */
            for (int j = 0; j < m; j++)
                if (sbuf[j] == smax) { seed = c + j; break; }
        }
    }
    if (seed < 0) return 1;  /* unreachable: the argmax token is finite */
    *seed_y = seed;
    uint64_t ks = kmin;
    int bk = NBIN, have = -1;  /* bins < bk are inside top-k; keys[0..nk) hold bin `have` */
    int64_t nk = 0;
    double mass_k = 0, mass_bk = 0;
    if (top_k > 0 && top_k < n) {
        int64_t cum = 0;
        int b = 0;
        for (; b < NBIN - 1 && cum + cnt[b] < top_k; b++) cum += cnt[b];
        const int64_t nb = collect_bin(R, mode, a, log_z, &all, fl, b, sbuf, keys, w);
        const int64_t need = top_k - cum;  /* 1 .. nb */
        ks = select_kth(keys, nb, need);   /* keys[0..need) are the kept ones of bin b */
        for (int64_t i = 0; i < need; i++)
            w[i] = (double)qs_exp(fmono_inv((uint32_t)(keys[i] >> 32)) - smax);
        for (int i = 0; i < b; i++) mass_k += mass[i];
        for (int64_t i = 0; i < need; i++) mass_bk += w[i];
        mass_k += mass_bk;
        bk = b; have = b; nk = need;
    } else {
        for (int i = 0; i < NBIN; i++) mass_k += mass[i];
    }
    if (top_p < 1.0f) {
        const double target = (double)top_p * mass_k;
        double cum = 0;
        int b = 0;
        for (; b < NBIN; b++) {
            const double mb = b == bk ? mass_bk : mass[b];
            if (b == bk || b == NBIN - 1 || cum + mb >= target) break;
            cum += mb;
        }
        if (b != have) nk = collect_bin(R, mode, a, log_z, &all, fl, b, sbuf, keys, w);
        double in_bin = 0;
        uint64_t kp = select_mass(keys, w, nk, target - cum, &in_bin);
        if (kp != UINT64_MAX) ks = kp > ks ? kp : ks;
        mass_k = cum + in_bin;
    }
    P->kstar = ks;
    P->need_lse = 0;  /* the kept mass is known: lse(s) = s_max + log(mass) */
    P->lse_known = (double)smax + log(mass_k);
    return 1;
}

/* Gumbel race argmax_y (s_y + G_y) over kept tokens, exactly as ref_sample.py: a token can
   only win if G_y > best - s_y >= best - (chunk max), i.e. r_y >> 9 >= kmin_for(...), so the
   noise is evaluated only for those (and Philox skipped for chunks that cannot win). */
static void race(const row_t *R, int mode, float a, float log_z, const samp_t *P,
                 const philox_t *PH, int64_t seed_y, float *sbuf, uint32_t *rbuf,
                 int64_t *tok, float *s_tok, double *lse) {
    const int64_t V = R->V;
    const float b1 = 1.0f - a;
    /* seed the race with a kept token of maximal s */
    float seed_s;
    {
        float x = mixl(mode, a, b1, lp_of(*R, R->xp[seed_y]), lt_of(*R, R->xt[seed_y]));
        seed_s = P->temp == 1.0f ? x - log_z : (x - log_z) / P->temp;
    }
    float best = seed_s + gumbel_of(philox_one(PH, (uint32_t)seed_y));
    int64_t best_i = seed_y;
    float best_s = seed_s;
    double zs = 0;
    const float smax = P->smax;
    for (int64_t c = 0; c < V; c += CH) {
        const int n = (int)(V - c < CH ? V - c : CH);
        float cm = s_chunk(R, mode, a, b1, log_z, P, c, n, sbuf);
        if (P->need_lse) {
            double zc = 0;
#pragma omp simd reduction(+ : zc)
            for (int j = 0; j < n; j++) zc += qs_exp(sbuf[j] - smax);  /* -inf -> 0 */
            zs += zc;
        }
        if (!(cm > NEG_INF)) continue;
        double margin = 1e-3 + 1e-5 * fabs((double)best);
        uint32_t kmin = kmin_for((double)best - cm - margin);
        if (kmin >= 8388608u) continue;
        philox_chunk(PH, (uint32_t)c, n, rbuf);
        int cnt = 0;
#pragma omp simd reduction(+ : cnt)
        for (int j = 0; j < n; j++) cnt += ((rbuf[j] >> 9) >= kmin) & (sbuf[j] > NEG_INF);
        if (!cnt) continue;
        for (int j = 0; j < n; j++) {
            if ((rbuf[j] >> 9) < kmin || !(sbuf[j] > NEG_INF)) continue;
            const int64_t y = c + j;
            float sc = sbuf[j] + gumbel_of(rbuf[j]);
            if (sc > best || (sc == best && y < best_i)) {
                best = sc; best_i = y; best_s = sbuf[j];
                margin = 1e-3 + 1e-5 * fabs((double)best);
                kmin = kmin_for((double)best - cm - margin);
            }
        }
    }
    *tok = best_i;
    *s_tok = best_s;
    *lse = P->need_lse ? (double)smax + log(zs) : P->lse_known;
}

/* Greedy: first index of the max of logq = x - log_z (fp32). */
static int64_t greedy(const row_t *R, int mode, float a, float log_z, float mx, float *sbuf) {
    const int64_t V = R->V;
    const float b1 = 1.0f - a;
    const float target = mx - log_z;
    samp_t P = {1.0f, 0, 0, 0, 0, 0, 0};
    for (int64_t c = 0; c < V; c += CH) {
        const int n = (int)(V - c < CH ? V - c : CH);
        float cm = s_chunk(R, mode, a, b1, log_z, &P, c, n, sbuf);
        if (cm < target) continue;
        for (int j = 0; j < n; j++)
            if (sbuf[j] == target) return c + j;
    }
    return 0;
}

/* ---------------------------------------------------------------- one row */

typedef struct {
    const float *xp, *xt;
    int64_t B, stride, vocab;
    int method;
    const float *alpha;
    float alpha_min, alpha_max;
    const float *temp, *top_p, *min_p;
    const int64_t *top_k, *seeds, *keys, *pos;
    int64_t *tokens;
    float *out;  /* (NOUT, B) */
    int32_t *iters;
    uint8_t *clamped;
    const uint8_t *force;  /* (B,) or NULL: forced rows are "fixed" at a = 0 with no clamps */
} args_t;

static int do_row(const args_t *A, int64_t r, scratch_t *scr) {
    row_t R;
    R.xp = A->xp + r * A->stride;
    R.xt = A->xt + r * A->stride;
    R.V = A->vocab;
    const int forced = A->force != NULL && A->force[r];
    const int method = forced ? M_FIXED : A->method;
    const int64_t V = R.V;
    model_t M;
    model_pass(&R, method == M_RKL, &M);

    /* ---- alpha */
    float raw = 0.5f, f_last = 0, scale_last = 0;
    int iters = 0;
    const int has_sup = M.n_s > 0;
    support_t S = {0};
    if (method == M_FIXED) {
        raw = forced ? 0.0f : A->alpha[r];
    } else if (method == M_ENTROPY) {
        raw = ratio_or_half((float)M.h_p, (float)M.h_t, 0.0f);
        iters = 1;
    } else if (method == M_RKL) {
        float kpt = (float)M.kl_pt, ktp = (float)M.kl_tp;
        raw = ratio_or_half(kpt > 0 ? kpt : 0.0f, ktp > 0 ? ktp : 0.0f, KL_ZERO);
        iters = 1;
    } else if (has_sup) {
        if (!M.mismatch) {
            support_direct(&R, &M, &S);
        } else {
            float *buf = (float *)scratch_get(scr, (size_t)V * 2 * sizeof(float));
            if (!buf) return 1;
            support_compact(&R, &M, method == M_KL, buf, buf + V, &S);
        }
        raw = newton(method, &S, &iters, &f_last, &scale_last);
    }
    const float lo = forced ? 0.0f : A->alpha_min, hi = forced ? 1.0f : A->alpha_max;
    float a = raw < lo ? lo : raw;
    a = a > hi ? hi : a;
    int clamped = a != raw;
    int orphan = !has_sup && a > 0.0f && a < 1.0f;
    if (orphan) a = 0.0f;
    float residual = 0.0f;
    if ((method == M_KL || method == M_ESS) && has_sup) {
        if (a != raw) evaluate(method, &S, a, &f_last, &(float){0}, &scale_last);
        residual = method == M_KL ? fabsf(f_last) / (1.0f + scale_last) : fabsf(f_last);
    }
    const int mode = a == 1.0f ? 1 : (a == 0.0f ? 0 : 2);

    /* ---- statistics of q at a */
    stats_t st;
    stats_pass(&R, mode, a, &st);
    const float log_z = st.log_z;

    /* ---- sampling */
    float sbuf[CH] __attribute__((aligned(64)));
    uint32_t rbuf[CH] __attribute__((aligned(64)));
    int64_t tok = st.arg >= 0 ? st.arg : 0;
    float lpb = 0.0f;
    const float temp = A->temp[r];
    if (st.arg < 0) {
        tok = 0;  /* no finite mixture logit (only reachable with validate=False) */
    } else if (temp == 0.0f) {
        tok = greedy(&R, mode, a, log_z, st.mx, sbuf);
    } else {
        samp_t P;
        P.temp = temp;
        P.truncated = 0;
        P.kstar = 0;
        P.smax = temp == 1.0f ? st.mx - log_z : (st.mx - log_z) / temp;
        const float smin = temp == 1.0f ? st.mn - log_z : (st.mn - log_z) / temp;
        P.bin_res = P.smax - smin > 1e-30f ? (float)(NBIN - 1) / (P.smax - smin) : 0.0f;
        P.need_lse = temp != 1.0f;  /* T = 1, untruncated: lse(logq) = 0 */
        P.lse_known = 0.0;
        int64_t seed_y = st.arg;
        const int64_t top_k = A->top_k[r];
        const float top_p = A->top_p[r], min_p = A->min_p[r];
        if (top_k > 0 || top_p < 1.0f || min_p > 0.0f) {
            P.need_lse = 1;  /* min-p only; top-k / top-p set the kept mass themselves */
            if (!truncation(&R, mode, a, log_z, &P, top_k, top_p, min_p, scr, sbuf, &seed_y))
                return 1;
        }
        philox_t PH;
        philox_init(&PH, (uint64_t)A->seeds[r], (uint64_t)A->keys[r], (uint64_t)A->pos[r]);
        float s_tok;
        double lse;
        race(&R, mode, a, log_z, &P, &PH, seed_y, sbuf, rbuf, &tok, &s_tok, &lse);
        lpb = s_tok - (float)lse;
    }

    /* ---- outputs */
    const int64_t B = A->B;
    float *o = A->out;
    float lp = lp_of(R, R.xp[tok]), lt = lt_of(R, R.xt[tok]);
    float x = mixl(mode, a, 1.0f - a, lp, lt);
    A->tokens[r] = tok;
    o[O_LP * B + r] = lp;
    o[O_LT * B + r] = lt;
    o[O_LQ * B + r] = x - log_z;
    o[O_LPB * B + r] = lpb;
    o[O_ALPHA * B + r] = a;
    o[O_LOGZ * B + r] = log_z;
    o[O_KLP * B + r] = (float)st.kl_p;
    o[O_KLT * B + r] = (float)st.kl_t;
    o[O_ESSP * B + r] = (float)st.ess_p;
    o[O_ESST * B + r] = (float)st.ess_t;
    o[O_HP * B + r] = (float)M.h_p;
    o[O_HT * B + r] = (float)M.h_t;
    o[O_HQ * B + r] = (float)st.h_q;
    o[O_RES * B + r] = residual;
    A->iters[r] = iters;
    A->clamped[r] = (uint8_t)(clamped | orphan);
    return 0;
}

/* ---------------------------------------------------------------- entry points */

int qstar_nout(void) { return NOUT; }
int qstar_philox_impl(void) { return QS_PHILOX_IMPL; }

/* Test hook: first Philox words of tokens y0..y0+n-1 (n <= 4096) through the chunk path. */
int qstar_philox(int64_t seed, int64_t key, int64_t pos, int64_t y0, int64_t n, uint32_t *out) {
    philox_t P;
    uint32_t buf[CH + 16] __attribute__((aligned(64)));
    philox_init(&P, (uint64_t)seed, (uint64_t)key, (uint64_t)pos);
    for (int64_t c = 0; c < n; c += CH) {
        int m = (int)(n - c < CH ? n - c : CH);
        philox_chunk(&P, (uint32_t)(y0 + c), m, buf);
        memcpy(out + c, buf, (size_t)m * 4);
    }
    return 0;
}

/* Test hook: qs_exp on an array. */
void qstar_exp(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = qs_exp(x[i]);
}

int qstar_step(const float *xp, const float *xt, int64_t B, int64_t stride, int64_t vocab,
               int method, const float *alpha, float alpha_min, float alpha_max,
               const float *temp, const int64_t *top_k, const float *top_p, const float *min_p,
               const int64_t *seeds, const int64_t *keys, const int64_t *pos, int64_t *tokens,
               float *out, int32_t *iters, uint8_t *clamped, const uint8_t *force, int nthreads) {
    args_t A = {xp, xt, B, stride, vocab, method, alpha, alpha_min, alpha_max, temp, top_p, min_p,
                top_k, seeds, keys, pos, tokens, out, iters, clamped, force};
    int err = 0;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > B) nthreads = (int)B;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(| : err)
    {
        scratch_t scr = {0, 0};
#pragma omp for schedule(dynamic, 1)
        for (int64_t r = 0; r < B; r++) err |= do_row(&A, r, &scr);
        free(scr.buf);
    }
    return err;
}
