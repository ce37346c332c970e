"""Triton EWA projection of 3D Gaussians: `project_gaussians_triton`, the twin of
`ngraphics.splatting.project.project_gaussians_torch` (same arguments, same dict), forward and backward.

Layout: the forward runs one lane per (Gaussian, camera) (grid: Gaussian blocks x cameras); the backward one
lane per Gaussian that loops over the C cameras, so each Gaussian's gradient is summed in registers (no
atomics). 3x3 matrices are tuples of 9 per-lane scalars, row-major; symmetric ones tuples of 6
(00, 01, 02, 11, 12, 22). The maths is the reference's (see its module doc):

    M = Rq(q / |q|) diag(s),  Mc = R M,  Sigma_c = Mc Mc^T,  p = R mu + t,
    Sigma2d = J Sigma_c J^T + eps2d I = [[a, b], [b, c]],  conic = (c, -b, a) / (a c - b^2)

Backward, per camera, from the cotangents of means2d (gu, gv), conics (gA, gB, gC), depths (gz) and the
output opacities (go):

    d(a, b, c)   from the conic (A, B, C) = (c, -b, a) / det, det = a c - b^2 (written out below), plus
                 the mip factor sqrt(det0 / det) where on
    dSigma_c     = J^T G J,  G = [[ga, gb / 2], [gb / 2, gc]]   (b enters once: symmetrised)
    dJ           = 2 G J Sigma_c  → p through fx / z, -fx x' / z^2 (x' clamped: 3DGS's guard)
    dp           += (gu fx / z, gv fy / z, gz - gu fx x / z^2 - gv fy y / z^2),   dmu += R^T dp
    dM           += R^T (2 dSigma_c Mc)
    after the loop: ds_j = sum_i dM_ij Rq_ij,  dRq_ij = dM_ij s_j  → q through the quaternion matrix and
    the normalisation.

Culled Gaussians (depth outside (near, far) or Sigma2d not positive definite) get gradient only through their
depth: the rasterizer never reads their means2d, conics or opacities (radius 0), so their cotangents are 0
in any render; the reference's placeholders there (z = 1, det = 1) are not differentiated here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

TUNING = {"block": 128, "warps": 4}  # not measured: elementwise lanes, one Gaussian each


@triton.jit
def _mm(a, b):
    """a @ b for 3x3 tuples (row-major)."""
    return (a[0] * b[0] + a[1] * b[3] + a[2] * b[6], a[0] * b[1] + a[1] * b[4] + a[2] * b[7],
            a[0] * b[2] + a[1] * b[5] + a[2] * b[8],
            a[3] * b[0] + a[4] * b[3] + a[5] * b[6], a[3] * b[1] + a[4] * b[4] + a[5] * b[7],
            a[3] * b[2] + a[4] * b[5] + a[5] * b[8],
            a[6] * b[0] + a[7] * b[3] + a[8] * b[6], a[6] * b[1] + a[7] * b[4] + a[8] * b[7],
            a[6] * b[2] + a[7] * b[5] + a[8] * b[8])


@triton.jit
def _mtm(a, b):
    """a^T @ b for 3x3 tuples."""
    return (a[0] * b[0] + a[3] * b[3] + a[6] * b[6], a[0] * b[1] + a[3] * b[4] + a[6] * b[7],
            a[0] * b[2] + a[3] * b[5] + a[6] * b[8],
            a[1] * b[0] + a[4] * b[3] + a[7] * b[6], a[1] * b[1] + a[4] * b[4] + a[7] * b[7],
            a[1] * b[2] + a[4] * b[5] + a[7] * b[8],
            a[2] * b[0] + a[5] * b[3] + a[8] * b[6], a[2] * b[1] + a[5] * b[4] + a[8] * b[7],
            a[2] * b[2] + a[5] * b[5] + a[8] * b[8])


@triton.jit
def _sym_mm(s, m):
    """S @ m for a symmetric tuple S (00, 01, 02, 11, 12, 22) and a 3x3 tuple m."""
    full = (s[0], s[1], s[2], s[1], s[3], s[4], s[2], s[4], s[5])
    return _mm(full, m)


@triton.jit
def _gaussian(means_ptr, quats_ptr, scales_ptr, n, live):
    """mu (3), unit quaternion (4), |q|, s (3), M = Rq diag(s) (9) and Rq (9) of Gaussians n."""
    mu = (tl.load(means_ptr + n * 3, mask=live, other=0.0),
          tl.load(means_ptr + n * 3 + 1, mask=live, other=0.0),
          tl.load(means_ptr + n * 3 + 2, mask=live, other=0.0))
    w = tl.load(quats_ptr + n * 4, mask=live, other=1.0)
    x = tl.load(quats_ptr + n * 4 + 1, mask=live, other=0.0)
    y = tl.load(quats_ptr + n * 4 + 2, mask=live, other=0.0)
    z = tl.load(quats_ptr + n * 4 + 3, mask=live, other=0.0)
    qnorm = tl.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / qnorm, x / qnorm, y / qnorm, z / qnorm
    s0 = tl.load(scales_ptr + n * 3, mask=live, other=1.0)
    s1 = tl.load(scales_ptr + n * 3 + 1, mask=live, other=1.0)
    s2 = tl.load(scales_ptr + n * 3 + 2, mask=live, other=1.0)
    Rq = (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
          2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
          2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y))
    M = (Rq[0] * s0, Rq[1] * s1, Rq[2] * s2, Rq[3] * s0, Rq[4] * s1, Rq[5] * s2,
         Rq[6] * s0, Rq[7] * s1, Rq[8] * s2)
    return mu, (w, x, y, z), qnorm, (s0, s1, s2), M, Rq


@triton.jit
def _camera(viewmats_ptr, Ks_ptr, c):
    """R (9), t (3), fx, fy, cx, cy of camera c (uniform per program)."""
    v = viewmats_ptr + c * 16
    R = (tl.load(v), tl.load(v + 1), tl.load(v + 2), tl.load(v + 4), tl.load(v + 5), tl.load(v + 6),
         tl.load(v + 8), tl.load(v + 9), tl.load(v + 10))
    t = (tl.load(v + 3), tl.load(v + 7), tl.load(v + 11))
    k = Ks_ptr + c * 9
    return R, t, tl.load(k), tl.load(k + 4), tl.load(k + 2), tl.load(k + 5)


@triton.jit
def _view(mu, M, R, t, fx, fy, cx, cy, W, H, eps2d, near, far):
    """Per camera: p (3), Mc (9), Sigma_c (6), z_safe, clamped (x', y') and their 'not clamped' flags,
    J terms, (a0, b, c0), (a, c), det, det0 and valid."""
    p = (R[0] * mu[0] + R[1] * mu[1] + R[2] * mu[2] + t[0], R[3] * mu[0] + R[4] * mu[1] + R[5] * mu[2] + t[1],
         R[6] * mu[0] + R[7] * mu[1] + R[8] * mu[2] + t[2])
    Mc = _mm(R, M)
    S = (Mc[0] * Mc[0] + Mc[1] * Mc[1] + Mc[2] * Mc[2], Mc[0] * Mc[3] + Mc[1] * Mc[4] + Mc[2] * Mc[5],
         Mc[0] * Mc[6] + Mc[1] * Mc[7] + Mc[2] * Mc[8], Mc[3] * Mc[3] + Mc[4] * Mc[4] + Mc[5] * Mc[5],
         Mc[3] * Mc[6] + Mc[4] * Mc[7] + Mc[5] * Mc[8], Mc[6] * Mc[6] + Mc[7] * Mc[7] + Mc[8] * Mc[8])
    z = p[2]
    in_depth = (z > near) & (z < far)
    zs = tl.where(in_depth, z, 1.0)
    lim_x0, lim_x1 = cx / fx + 0.15 * W / fx, (W - cx) / fx + 0.15 * W / fx
    lim_y0, lim_y1 = cy / fy + 0.15 * H / fy, (H - cy) / fy + 0.15 * H / fy
    rx, ry = p[0] / zs, p[1] / zs
    ux = (rx >= -lim_x0) & (rx <= lim_x1)
    uy = (ry >= -lim_y0) & (ry <= lim_y1)
    xc = zs * tl.minimum(tl.maximum(rx, -lim_x0), lim_x1)
    yc = zs * tl.minimum(tl.maximum(ry, -lim_y0), lim_y1)
    j00, j02 = fx / zs, -fx * xc / (zs * zs)
    j11, j12 = fy / zs, -fy * yc / (zs * zs)
    a0 = j00 * j00 * S[0] + 2 * j00 * j02 * S[2] + j02 * j02 * S[5]
    b = j00 * j11 * S[1] + j00 * j12 * S[2] + j02 * j11 * S[4] + j02 * j12 * S[5]
    c0 = j11 * j11 * S[3] + 2 * j11 * j12 * S[4] + j12 * j12 * S[5]
    a, c = a0 + eps2d, c0 + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    return p, Mc, S, zs, xc, yc, ux, uy, (j00, j02, j11, j12), (a0, b, c0), a, c, det, a0 * c0 - b * b, valid


@triton.jit
def _project_fwd_kernel(means_ptr, quats_ptr, scales_ptr, opac_ptr, viewmats_ptr, Ks_ptr, m2d_ptr, con_ptr,
                        dep_ptr, rad_ptr, opo_ptr, N, W, H, eps2d, near, far, MIP: tl.constexpr,
                        BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    c = tl.program_id(1)
    live = n < N
    mu, q, qnorm, s, M, Rq = _gaussian(means_ptr, quats_ptr, scales_ptr, n, live)
    R, t, fx, fy, cx, cy = _camera(viewmats_ptr, Ks_ptr, c)
    p, Mc, S, zs, xc, yc, ux, uy, J, cov, a, cc, det, det0, valid = _view(mu, M, R, t, fx, fy, cx, cy, W, H,
                                                                         eps2d, near, far)
    ds = tl.where(valid, det, 1.0)
    u = fx * p[0] / zs + cx
    v = fy * p[1] / zs + cy
    mid = 0.5 * (a + cc)
    lam = mid + tl.sqrt(tl.maximum(mid * mid - det, 0.01))
    r = tl.ceil(3.0 * tl.sqrt(lam))
    on_image = (u + r > 0) & (u - r < W) & (v + r > 0) & (v - r < H)
    r = tl.where(valid & on_image, r, 0.0).to(tl.int32)
    o = tl.load(opac_ptr + n, mask=live, other=0.0)
    if MIP:
        o = o * tl.sqrt(tl.maximum(det0 / ds, 0.0))
    out = c * N + n
    tl.store(m2d_ptr + out * 2, u, mask=live)
    tl.store(m2d_ptr + out * 2 + 1, v, mask=live)
    tl.store(con_ptr + out * 3, cc / ds, mask=live)
    tl.store(con_ptr + out * 3 + 1, -cov[1] / ds, mask=live)
    tl.store(con_ptr + out * 3 + 2, a / ds, mask=live)
    tl.store(dep_ptr + out, p[2], mask=live)
    tl.store(rad_ptr + out, r, mask=live)
    tl.store(opo_ptr + out, o, mask=live)


@triton.jit
def _project_bwd_kernel(means_ptr, quats_ptr, scales_ptr, opac_ptr, viewmats_ptr, Ks_ptr, g_m2d_ptr,
                        g_con_ptr, g_dep_ptr, g_opo_ptr, d_means_ptr, d_quats_ptr, d_scales_ptr, d_opac_ptr,
                        N, C, W, H, eps2d, near, far, MIP: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = n < N
    mu, q, qnorm, s, M, Rq = _gaussian(means_ptr, quats_ptr, scales_ptr, n, live)
    o = tl.load(opac_ptr + n, mask=live, other=0.0)
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    d_mu = (zero, zero, zero)
    dM = (zero, zero, zero, zero, zero, zero, zero, zero, zero)
    d_o = zero
    for c in range(0, C):
        R, t, fx, fy, cx, cy = _camera(viewmats_ptr, Ks_ptr, c)
        p, Mc, S, zs, xc, yc, ux, uy, J, cov, a, cc, det, det0, valid = _view(mu, M, R, t, fx, fy, cx, cy,
                                                                             W, H, eps2d, near, far)
        out = c * N + n
        keep = live & valid  # culled: only the depth cotangent reaches them (see the module doc)
        gu = tl.load(g_m2d_ptr + out * 2, mask=keep, other=0.0)
        gv = tl.load(g_m2d_ptr + out * 2 + 1, mask=keep, other=0.0)
        gA = tl.load(g_con_ptr + out * 3, mask=keep, other=0.0)
        gB = tl.load(g_con_ptr + out * 3 + 1, mask=keep, other=0.0)
        gC = tl.load(g_con_ptr + out * 3 + 2, mask=keep, other=0.0)
        gz = tl.load(g_dep_ptr + out, mask=live, other=0.0)
        go = tl.load(g_opo_ptr + out, mask=keep, other=0.0)
        ds = tl.where(valid, det, 1.0)
        b = cov[1]
        inv2 = 1.0 / (ds * ds)
        # conic (A, B, C) = (c, -b, a) / det, det = a c - b^2
        ga = (-gA * cc * cc + gB * b * cc - gC * b * b) * inv2
        gb = (2 * gA * b * cc - gB * (ds + 2 * b * b) + 2 * gC * a * b) * inv2
        gc = (-gA * b * b + gB * a * b - gC * a * a) * inv2
        if MIP:  # opacity o sqrt(r), r = det0 / det, det0 = a0 c0 - b^2
            ratio = det0 / ds
            comp = tl.sqrt(tl.maximum(ratio, 0.0))
            d_o += go * comp
            gr = tl.where(ratio > 0, go * o * 0.5 / tl.where(ratio > 0, comp, 1.0), 0.0)
            ga += gr * (cov[2] * ds - det0 * cc) * inv2
            gb += gr * 2 * b * (det0 - ds) * inv2
            gc += gr * (cov[0] * ds - det0 * a) * inv2
        else:
            d_o += go
        j00, j02, j11, j12 = J
        # dSigma_c = J^T G J, G = [[ga, gb / 2], [gb / 2, gc]], J rows (j00, 0, j02), (0, j11, j12)
        hb = 0.5 * gb
        dS = (ga * j00 * j00, hb * j00 * j11, ga * j00 * j02 + hb * j00 * j12,
              gc * j11 * j11, hb * j02 * j11 + gc * j11 * j12,
              ga * j02 * j02 + 2 * hb * j02 * j12 + gc * j12 * j12)
        # dJ = 2 G J Sigma_c; rows of J Sigma_c:
        JS0 = (j00 * S[0] + j02 * S[2], j00 * S[1] + j02 * S[4], j00 * S[2] + j02 * S[5])
        JS1 = (j11 * S[1] + j12 * S[2], j11 * S[3] + j12 * S[4], j11 * S[4] + j12 * S[5])
        dj00 = 2 * (ga * JS0[0] + hb * JS1[0])
        dj02 = 2 * (ga * JS0[2] + hb * JS1[2])
        dj11 = 2 * (hb * JS0[1] + gc * JS1[1])
        dj12 = 2 * (hb * JS0[2] + gc * JS1[2])
        iz = 1.0 / zs
        iz2 = iz * iz
        fxz, fyz = fx * iz2, fy * iz2
        gpx = gu * fx * iz - dj02 * fxz * ux.to(tl.float32)
        gpy = gv * fy * iz - dj12 * fyz * uy.to(tl.float32)
        gpz = (-gu * fx * p[0] * iz2 - gv * fy * p[1] * iz2 - dj00 * fxz - dj11 * fyz
               + dj02 * (2 * fx * xc * iz2 * iz - fxz * (1 - ux.to(tl.float32)) * xc * iz)
               + dj12 * (2 * fy * yc * iz2 * iz - fyz * (1 - uy.to(tl.float32)) * yc * iz))
        gpz = tl.where(keep, gpz, 0.0) + gz
        d_mu = (d_mu[0] + R[0] * gpx + R[3] * gpy + R[6] * gpz,
                d_mu[1] + R[1] * gpx + R[4] * gpy + R[7] * gpz,
                d_mu[2] + R[2] * gpx + R[5] * gpy + R[8] * gpz)
        dMc = _sym_mm(dS, Mc)  # dSigma_c Mc; times 2 below
        dMw = _mtm(R, dMc)
        dM = (dM[0] + 2 * dMw[0], dM[1] + 2 * dMw[1], dM[2] + 2 * dMw[2],
              dM[3] + 2 * dMw[3], dM[4] + 2 * dMw[4], dM[5] + 2 * dMw[5],
              dM[6] + 2 * dMw[6], dM[7] + 2 * dMw[7], dM[8] + 2 * dMw[8])
    # M = Rq diag(s): ds_j = sum_i dM_ij Rq_ij, dRq_ij = dM_ij s_j
    d_s0 = dM[0] * Rq[0] + dM[3] * Rq[3] + dM[6] * Rq[6]
    d_s1 = dM[1] * Rq[1] + dM[4] * Rq[4] + dM[7] * Rq[7]
    d_s2 = dM[2] * Rq[2] + dM[5] * Rq[5] + dM[8] * Rq[8]
    G = (dM[0] * s[0], dM[1] * s[1], dM[2] * s[2], dM[3] * s[0], dM[4] * s[1], dM[5] * s[2],
         dM[6] * s[0], dM[7] * s[1], dM[8] * s[2])
    w, x, y, z = q
    dw = 2 * (-z * G[1] + y * G[2] + z * G[3] - x * G[5] - y * G[6] + x * G[7])
    dx = 2 * (y * G[1] + z * G[2] + y * G[3] - 2 * x * G[4] - w * G[5] + z * G[6] + w * G[7] - 2 * x * G[8])
    dy = 2 * (-2 * y * G[0] + x * G[1] + w * G[2] + x * G[3] + z * G[5] - w * G[6] + z * G[7] - 2 * y * G[8])
    dz = 2 * (-2 * z * G[0] - w * G[1] + x * G[2] + w * G[3] - 2 * z * G[4] + y * G[5] + x * G[6] + y * G[7])
    dot = w * dw + x * dx + y * dy + z * dz  # through q / |q|
    tl.store(d_quats_ptr + n * 4, (dw - w * dot) / qnorm, mask=live)
    tl.store(d_quats_ptr + n * 4 + 1, (dx - x * dot) / qnorm, mask=live)
    tl.store(d_quats_ptr + n * 4 + 2, (dy - y * dot) / qnorm, mask=live)
    tl.store(d_quats_ptr + n * 4 + 3, (dz - z * dot) / qnorm, mask=live)
    tl.store(d_scales_ptr + n * 3, d_s0, mask=live)
    tl.store(d_scales_ptr + n * 3 + 1, d_s1, mask=live)
    tl.store(d_scales_ptr + n * 3 + 2, d_s2, mask=live)
    tl.store(d_means_ptr + n * 3, d_mu[0], mask=live)
    tl.store(d_means_ptr + n * 3 + 1, d_mu[1], mask=live)
    tl.store(d_means_ptr + n * 3 + 2, d_mu[2], mask=live)
    tl.store(d_opac_ptr + n, d_o, mask=live)


class ProjectFn(torch.autograd.Function):
    """(means2d, conics, depths, radii, opacities) from fp32 contiguous means, quats, scales, opacities and
    the cameras; differentiable w.r.t. the four Gaussian inputs."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near, far, mip):
        N, C, dev = means.shape[0], viewmats.shape[0], means.device
        m2d = torch.empty(C, N, 2, dtype=torch.float32, device=dev)
        con = torch.empty(C, N, 3, dtype=torch.float32, device=dev)
        dep = torch.empty(C, N, dtype=torch.float32, device=dev)
        rad = torch.empty(C, N, dtype=torch.int32, device=dev)
        opo = torch.empty(C, N, dtype=torch.float32, device=dev)
        if N and C:
            _project_fwd_kernel[(triton.cdiv(N, TUNING["block"]), C)](
                means, quats, scales, opacities, viewmats, Ks, m2d, con, dep, rad, opo, N, width, height,
                eps2d, near, far, MIP=mip, BLOCK=TUNING["block"], num_warps=TUNING["warps"])
        ctx.save_for_backward(means, quats, scales, opacities, viewmats, Ks)
        ctx.args = (width, height, eps2d, near, far, mip)
        ctx.mark_non_differentiable(rad)
        return m2d, con, dep, rad, opo

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_m2d, g_con, g_dep, g_rad, g_opo):
        means, quats, scales, opacities, viewmats, Ks = ctx.saved_tensors
        width, height, eps2d, near, far, mip = ctx.args
        N, C = means.shape[0], viewmats.shape[0]

        def dense(g, shape):
            if g is None:
                return torch.zeros(shape, dtype=torch.float32, device=means.device)
            return g.float().contiguous()

        g_m2d, g_con = dense(g_m2d, (C, N, 2)), dense(g_con, (C, N, 3))
        g_dep, g_opo = dense(g_dep, (C, N)), dense(g_opo, (C, N))
        d_means, d_quats = torch.empty_like(means), torch.empty_like(quats)
        d_scales, d_opac = torch.empty_like(scales), torch.empty_like(opacities)
        if N:
            _project_bwd_kernel[(triton.cdiv(N, TUNING["block"]),)](
                means, quats, scales, opacities, viewmats, Ks, g_m2d, g_con, g_dep, g_opo, d_means, d_quats,
                d_scales, d_opac, N, C, width, height, eps2d, near, far, MIP=mip, BLOCK=TUNING["block"],
                num_warps=TUNING["warps"])
        return d_means, d_quats, d_scales, d_opac, None, None, None, None, None, None, None, None


def project_gaussians_triton(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                             opacities: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
                             height: int, eps2d: float = 0.3, near: float = 0.01, far: float = 1e10,
                             mip_filter: bool = False) -> dict:
    """EWA-project N Gaussians into C cameras: `ngraphics.splatting.project.project_gaussians_torch` on the GPU
    (same arguments and outputs, fp32). Not differentiable w.r.t. viewmats and Ks (the reference is)."""
    N, C = means.shape[0], viewmats.shape[0]
    if means.shape != (N, 3) or quats.shape != (N, 4) or scales.shape != (N, 3) or opacities.shape != (N,) \
            or viewmats.shape != (C, 4, 4) or Ks.shape != (C, 3, 3):
        raise ValueError(f"project_gaussians_triton: expected means (N, 3), quats (N, 4), scales (N, 3), "
                         f"opacities (N,), viewmats (C, 4, 4), Ks (C, 3, 3), got {tuple(means.shape)}, "
                         f"{tuple(quats.shape)}, {tuple(scales.shape)}, {tuple(opacities.shape)}, "
                         f"{tuple(viewmats.shape)}, {tuple(Ks.shape)}")
    f32 = [t.float().contiguous() for t in (means, quats, scales, opacities)]
    m2d, con, dep, rad, opo = ProjectFn.apply(*f32, viewmats.detach().float().contiguous(),
                                              Ks.detach().float().contiguous(), int(width), int(height),
                                              float(eps2d), float(near), float(far), bool(mip_filter))
    return {"means2d": m2d, "conics": con, "depths": dep, "radii": rad, "opacities": opo}


__all__ = ["TUNING", "project_gaussians_triton"]
