"""Exact single-car LP with a binding taper, vectorised over cars.

One car, modulated, no feeder. After the min-SoC prefix its window is the slots ``u0..uL``:
``u0`` (lower bound ``lb``) and ``uL`` may be partially available, the slots between them
("interior") are fully available and share one map ``f`` (see :mod:`._physics`). Slots whose
cost ``q = price + weight * carbon / 1000 - penalty * efficiency`` is ``>= 0`` are never worth
charging and are dropped. The LP is ``min sum(q * x)`` over the slot model.

Structure used
--------------
* A vertex has at most one *partial* slot (strictly between 0 and its limit); every other used
  slot is at its limit. Between them the level follows the fixed sequence ``f(f(...))``, so a
  vertex is fixed by which slots are used, which one is partial, and the target level.
* Below ``E_m`` (:attr:`FleetProblem.taper_free_kwh`) a slot at the limit adds exactly
  ``cap``; above it every used slot is taper-bound. Used slots therefore split in time into a
  *head* (all at ``cap``) and a *tail* (taper-bound).
* LP duality: with ``Lambda[t]`` the sum of later taper multipliers (non-increasing in ``t``),
  every head slot is at least as cheap as every unused slot. Ranking interior slots by ``q``
  (ties by time) and writing ``C_m`` for the ``m`` cheapest, an optimal head of ``k`` slots is
  the first ``k`` in time of some ``C_m`` with ``k <= m <= k + (tail length)``. This leaves only a
  handful of head candidates per car.
* The tail is solved by a backward dynamic programme over time whose states are positions on
  four level grids: forward from the head end (before the partial slot; with or without the
  first slot ``u0`` used) and backward from the target (after the partial slot; with or
  without the last slot ``uL`` used). Full slots move one step along a grid; the partial slot
  jumps from the forward grid to the unique backward level inside its reach.

The answer is the cheapest (head candidate + tail cost-to-go at the head's end), and the plan is
rebuilt from the stored decisions, then checked against the slot model before it is returned.
"""

from __future__ import annotations

import numpy as np

from ._physics import step_down, step_up

# More grid steps than this in the taper region (a very slow taper to a target near 100 %)
# and the car is handed to the LP fallback instead of growing the state space without bound.
MAX_TAPER_STEPS = 160

_INF = np.inf


def _forward_grid(start, limit, cap, alpha, rhs, taper, rmax):
    """Levels ``start, f(start), ...`` kept while ``<= limit`` (NaN after), plus overflow flag."""
    n = start.shape[0]
    cols = [np.where(start <= limit, start, np.nan)]
    level = start.copy()
    for _ in range(rmax):
        level = step_up(level, cap, alpha, rhs, taper)
        ok = level <= limit
        if not ok.any():
            break
        cols.append(np.where(ok & ~np.isnan(cols[-1]), level, np.nan))
    else:
        return np.stack(cols, axis=1), np.ones(n, bool) & ~np.isnan(cols[-1])
    return np.stack(cols, axis=1), np.zeros(n, bool)


def _backward_grid(top, em, floor, cap, alpha, rhs, taper, rmax):
    """Levels ``top, f^-1(top), ...`` down to the first one ``<= em`` or ``< floor`` (NaN after)."""
    n = top.shape[0]
    cols = [top.copy()]
    alive = ~np.isnan(top) & (top > em) & (top >= floor)
    level = top.copy()
    for _ in range(rmax):
        if not alive.any():
            break
        level = step_down(level, cap, alpha, rhs, taper)
        cols.append(np.where(alive, level, np.nan))
        alive = alive & (level > em) & (level >= floor)
    else:
        return np.stack(cols, axis=1), alive
    return np.stack(cols, axis=1), np.zeros(n, bool)


def _min_step(need, cap, alpha, rhs):
    """Smallest energy of a full interior slot below the target: the step that ends at ``need``."""
    below = step_down(need, cap, alpha, rhs, True)
    return need - below


def _head_candidates(slot_by_rank, q_by_rank, n_int, k, m_extra, n_counts=1):
    """Head candidates: for ``m = k .. k + m_extra``, the first ``k`` in time of ``C_m``.

    ``C_m`` is the set of the ``m`` cheapest interior slots (``slot_by_rank[:, :m]``). Adding
    ranks ``k .. m-1`` to the ``k`` cheapest can only pull the head's last slot earlier, so the
    ``k``-th smallest time of ``C_m`` is found among the last ``m_extra + n_counts`` times of
    ``C_k`` and the added slots. With ``n_counts > 1`` the same is returned for the head sizes
    ``k + 1, ..., k + n_counts - 1`` too (sharing the work).

    Returns ``tau`` (last head slot + 1), ``qsum`` (sum of ``q`` over the head) and
    ``partial_rank`` (largest rank in the head), each (n, n_counts, m_extra + 1); invalid
    entries have ``tau = -1``; an empty head (size 0) has ``tau = -2`` in column 0.
    """
    n, width = slot_by_rank.shape[0], m_extra + 1
    nc = n_counts
    tau = np.full((n, nc, width), -1, dtype=np.int64)
    qsum = np.zeros((n, nc, width))
    prank = np.zeros((n, nc, width), dtype=np.int64)
    for d in range(nc):
        tau[k + d == 0, d, 0] = -2
    kmax = int(k.max()) if n else 0
    n_add = m_extra + nc - 1  # ranks added on top of C_k
    wl = m_extra + nc  # last times of C_k that can be the threshold
    if n == 0 or int((k + nc - 1).max()) == 0:
        return tau, qsum, prank
    big = np.iinfo(np.int64).max // 4
    rows = np.arange(n)[:, None]
    nr = slot_by_rank.shape[1]
    ka = max(kmax, 1)
    # C_k sorted by time, with its q prefix sums and rank prefix maxima.
    r_idx = np.arange(ka)[None, :]
    in_a = r_idx < k[:, None]
    times_a = np.where(in_a, slot_by_rank[:, :ka], big)
    o = np.argsort(times_a, axis=1, kind="stable")
    ta = np.take_along_axis(times_a, o, axis=1)
    qa = np.cumsum(np.where(in_a, q_by_rank[:, :ka], 0.0)[rows, o], axis=1)
    ra = np.maximum.accumulate(np.where(np.take_along_axis(in_a, o, axis=1), o, -1), axis=1)
    pos = k[:, None] - wl + np.arange(wl)[None, :]
    a_last = np.where(pos >= 0, ta[rows, np.clip(pos, 0, ka - 1)], big)
    base = np.maximum(k - wl, 0)
    # Added slots: ranks k .. k + n_add - 1.
    er = k[:, None] + np.arange(n_add)[None, :]
    e_ok = er < n_int[:, None]
    erc = np.clip(er, 0, nr - 1)
    te = np.where(e_ok, slot_by_rank[rows, erc], big)
    qe = np.where(e_ok, q_by_rank[rows, erc], 0.0)
    # For each candidate threshold v and number a of added slots: members of C_k + added at or
    # before v.
    v = np.concatenate([a_last, te], axis=1)  # (n, V)
    cnt_a = base[:, None] + (a_last[:, None, :] <= v[:, :, None]).sum(axis=2)  # (n, V)
    e_le = (te[:, None, :] <= v[:, :, None])  # (n, V, n_add)
    cnt_e = np.zeros(e_le.shape[:2] + (n_add + 1,), np.int32)
    np.cumsum(e_le, axis=2, out=cnt_e[:, :, 1:])
    total = cnt_a[:, :, None] + cnt_e  # (n, V, n_add + 1)
    a_idx = np.arange(n_add + 1)
    e_valid = np.arange(n_add)[None, :, None] < a_idx[None, None, :]  # e_j is in after a added
    v_ok = np.concatenate(
        [np.ones((n, wl, n_add + 1), bool), np.broadcast_to(e_valid, (n, n_add, n_add + 1))], axis=1
    )
    v_ok &= (v < big)[:, :, None]
    for d in range(nc):
        kk = k + d
        # head size kk with m = kk + s uses a = d + s added slots
        sl = slice(d, d + width)
        cand = np.where(v_ok[:, :, sl] & (total[:, :, sl] >= kk[:, None, None]), v[:, :, None], big)
        theta = cand.min(axis=1)  # (n, width)
        ca = base[:, None] + (a_last[:, None, :] <= theta[:, :, None]).sum(axis=2)
        cac = np.clip(ca - 1, 0, ka - 1)
        q_head = np.where(ca > 0, qa[rows, cac], 0.0)
        r_head = np.where(ca > 0, ra[rows, cac], -1)
        inc_e = (te[:, None, :] <= theta[:, :, None]) & e_valid[0, :, sl].T[None, :, :]
        q_head = q_head + (inc_e * qe[:, None, :]).sum(axis=2)
        r_e = np.where(inc_e, er[:, None, :], -1).max(axis=2)
        s_idx = np.arange(width)
        ok = (kk[:, None] >= 1) & (kk[:, None] + s_idx[None, :] <= n_int[:, None]) & (theta < big)
        tau[:, d] = np.where(ok, theta + 1, tau[:, d])
        qsum[:, d] = np.where(ok, q_head, 0.0)
        prank[:, d] = np.where(ok, np.maximum(r_head, r_e), 0)
    return tau, qsum, prank


def _tail_dp(first_needed, t_lo, t_hi, q, interior, u0, C0, C1, dG, dB, jump, Jc, live_f, live_b):
    """Backward DP over slots ``t_hi - 1 .. t_lo`` (cost-to-go of each tail state).

    Rows are processed in order of the earliest slot any of their candidates needs, so that at
    slot ``t`` only a prefix of rows is updated. Returns, in the original row order, the
    cost-to-go recorded at each slot for the entry states (forward grids at index 0, backward
    grids at their last index) and the backward grids' cost-to-go at ``u0 + 1``; then the
    decisions in processing order and ``inv``, the processing row of each original row.
    """
    n = q.shape[0]
    NF = len(C0)
    span = max(t_hi - t_lo + 1, 1)
    perm = np.argsort(first_needed, kind="stable")
    inv = np.empty_like(perm)
    inv[perm] = np.arange(n)
    fn_sorted = first_needed[perm]
    rows = np.arange(n)
    C0 = [c[perm] for c in C0]
    C1 = [c[perm] for c in C1]
    dG = [d[perm] for d in dG]
    dB = [d[perm] for d in dB]
    qp = q[perm]
    intp = interior[perm]
    u0p = u0[perm]
    Jcp = [j[perm] for j in Jc]
    jp = {}
    for key, (jsc, energy, ok, flat, any_ok) in jump.items():
        w = C1[key[1]].shape[1]
        jp[key] = (energy[perm], ok[perm], rows[:, None] * w + jsc[perm], any_ok)
    rec0 = np.full((NF, span, n), _INF)
    rec1 = np.full((2, span, n), _INF)
    at1 = [np.full(c.shape, _INF) for c in C1]
    dec0 = [np.zeros((span, n, c.shape[1]), np.int8) for c in C0]
    dec1 = [np.zeros((span, n, c.shape[1]), bool) for c in C1]

    def record(t):
        ti = t - t_lo
        for f in range(NF):
            rec0[f, ti] = C0[f][:, 0]
        for psi in range(2):
            rec1[psi, ti] = C1[psi][rows, Jcp[psi]]
        hit = u0p + 1 == t
        if hit.any():
            for psi in range(2):
                at1[psi][hit] = C1[psi][hit]

    record(t_hi)
    for t in range(t_hi - 1, t_lo - 1, -1):
        L = int(np.searchsorted(fn_sorted, t, side="right"))
        act = intp[:L, t]
        if L and act.any():
            ti = t - t_lo
            qt = qp[:L, t][:, None]
            a2 = act[:, None]
            # Updates in place: a candidate replaces the cost-to-go only where it is strictly
            # better and the slot is interior for the car (decisions start at 0, "off").
            for f in range(NF):
                if not live_f[f]:
                    continue
                c = C0[f][:L]
                d = dec0[f][ti, :L]
                if c.shape[1] > 1:
                    cand = qt * dG[f][:L]
                    cand += c[:, 1:]
                    better = cand < c[:, :-1]
                    better &= a2
                    np.copyto(c[:, :-1], cand, where=better)
                    d[:, :-1] = better
                for psi in range(2):
                    energy, ok, flat, any_ok = jp[f, psi]
                    if not any_ok:
                        continue
                    cand = qt * energy[:L]
                    cand += np.take(C1[psi], flat[:L])
                    better = cand < c
                    better &= ok[:L]
                    better &= a2
                    np.copyto(c, cand, where=better)
                    np.copyto(d, np.int8(2 + psi), where=better)
            for psi in range(2):
                c = C1[psi][:L]
                if c.shape[1] > 1 and live_b[psi]:
                    cand = qt * dB[psi][:L]
                    cand += c[:, :-1]
                    better = cand < c[:, 1:]
                    better &= a2
                    dec1[psi][ti, :L, 1:] = better
                    np.copyto(c[:, 1:], cand, where=better)
        record(t)
    rec0 = rec0[:, :, inv]
    rec1 = rec1[:, :, inv]
    at1 = [a[inv] for a in at1]
    # The decisions stay in processing order (row inv[i] is car i): they are large and only a
    # few entries are read back.
    return rec0, rec1, at1, dec0, dec1, inv


def solve_taper_cars(
    q: np.ndarray,
    avail: np.ndarray,
    u0: np.ndarray,
    uL: np.ndarray,
    lb: np.ndarray,
    s_base: np.ndarray,
    cap1: np.ndarray,
    alpha1: np.ndarray,
    rhs1: np.ndarray,
    need: np.ndarray,
    em: np.ndarray,
    q_offset: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact free-part plans for taper-bound cars (see module docstring).

    Parameters
    ----------
    q : ndarray, shape (n, T)
        Slot cost including the shortfall value (GBP/kWh), ``< 0`` where charging pays.
    avail : ndarray, shape (n, T)
        Availability fractions.
    u0, uL : ndarray of int, shape (n,)
        First free slot (after the min-SoC prefix) and last window slot, ``u0 < uL``.
    lb : ndarray, shape (n,)
        Lower bound on the energy of slot ``u0`` (kWh).
    s_base : ndarray, shape (n,)
        Level before ``u0`` (kWh).
    cap1, alpha1, rhs1 : ndarray, shape (n,)
        Limit and taper coefficients of a fully available slot.
    need, em : ndarray, shape (n,)
        Target level ``E`` and taper-free level ``E_m`` (kWh).
    q_offset : ndarray, shape (n,), optional
        Given when ``q[i] + q_offset[i]`` is the same row for every car and every slot from
        ``u0 + 1`` to ``uL - 1`` has ``q < 0``; head candidates are then shared between cars.

    Returns
    -------
    energy : ndarray, shape (n, T)
        Energy of slots ``u0..uL`` (kWh), zero elsewhere.
    ok : ndarray of bool, shape (n,)
        ``False`` for cars this method refuses (grids longer than :data:`MAX_TAPER_STEPS`).

    Notes
    -----
    Vertex types enumerated (head = translation slots before the tail, all at ``cap`` except at
    most one partial slot):

    * ``A``: head of the most translation slots that fit below ``E_m``; tail on forward grid 0/1
      (``u0`` at its lower bound / at its limit), partial slot (if any) in the tail;
    * ``B``: head with a partial slot ending on the last backward level at or below ``E_m``;
    * ``E``: head with a partial slot ending exactly at ``E_m`` (the last head slot then has
      both its power and taper rows tight), tail on forward grid 2 (from ``E_m``) with possibly a
      second partial slot;
    * ``H``: head with a partial slot ending where ``uL`` at its limit ends exactly at ``E_m``
      (``uL`` is then tight on both rows; the car falls short);
    * each of these with ``u0`` itself as the head's partial slot, ending on the head's end level
      or whole slots below it.

    A doubly tight slot (power and taper rows both tight, end level exactly ``E_m``) is the only
    way a vertex gets a second partial slot, and there is at most one such slot.
    """
    n, T = q.shape
    rows = np.arange(n)
    taper = np.ones(n, bool)
    a0 = avail[rows, u0]
    aL = avail[rows, uL]
    q0 = q[rows, u0]
    qL = q[rows, uL]
    cap0, al0, rh0 = a0 * cap1, a0 * alpha1, a0 * rhs1
    capL, alL, rhL = aL * cap1, aL * alpha1, aL * rhs1
    uL_ok = (qL < 0) & (uL > u0)

    cols = np.arange(T)[None, :]
    interior = (cols > u0[:, None]) & (cols < uL[:, None]) & (q < 0)
    n_int = interior.sum(axis=1)
    # u0 above its lower bound pays only if fewer than (most slots a plan can use) later slots
    # are strictly cheaper: by duality every unused slot is at least as dear as a used u0.
    later = interior | ((cols == uL[:, None]) & uL_ok[:, None])
    cheaper = (later & (q < q0[:, None])).sum(axis=1)
    most_used = np.ceil((need - s_base) / np.maximum(_min_step(need, cap1, alpha1, rhs1), 1e-12)) + 3
    u0_free = (q0 < 0) & (cheaper < most_used)
    if 0 < u0_free.sum() < n:
        # Cars whose first slot may carry more than its lower bound need two extra level grids;
        # solve them apart so that the others do not carry those grids.
        x = np.zeros((n, T))
        okall = np.ones(n, bool)
        for part in (u0_free, ~u0_free):
            r = np.flatnonzero(part)
            x[r], okall[r] = solve_taper_cars(
                q[r], avail[r], u0[r], uL[r], lb[r], s_base[r], cap1[r], alpha1[r], rhs1[r], need[r], em[r],
                None if q_offset is None else q_offset[r],
            )
        return x, okall

    # ---- start variants: u0 at its lower bound (0) or at its limit (1)
    f0 = step_up(s_base, cap0, al0, rh0, taper)
    sst = np.stack([s_base + lb, f0], axis=1)
    cst = np.stack([q0 * lb, q0 * (f0 - s_base)], axis=1)
    st_ok = np.stack([np.ones(n, bool), u0_free & (f0 <= need) & (f0 > s_base + lb)], axis=1)

    # ---- head of translation slots up to E_m
    with np.errstate(invalid="ignore"):
        kh = np.floor(np.minimum(em[:, None] - sst, need[:, None] - sst) / cap1[:, None])
    kh = np.clip(np.nan_to_num(kh, nan=0.0), 0, n_int[:, None]).astype(np.int64)
    g0 = sst + kh * cap1[:, None]

    # ---- forward grids (before the partial slot): from the two maximal heads and from E_m
    refuse = np.zeros(n, bool)
    starts = [np.where(st_ok[:, 0], g0[:, 0], np.nan), np.where(st_ok[:, 1], g0[:, 1], np.nan),
              np.where((em > sst[:, 0]) & (em < need), em, np.nan)]
    G = []
    for f in range(3):
        grid, over = _forward_grid(starts[f], need, cap1, alpha1, rhs1, taper, MAX_TAPER_STEPS)
        refuse |= over
        G.append(grid)
    NF = len(G)
    # ---- backward grids (after the partial slot): to E, or to the level from which uL at its
    # limit reaches E
    y1 = step_down(need, capL, alL, rhL, taper)
    tgt = [need, np.where(uL_ok & (y1 >= sst[:, 0]), y1, np.nan)]
    B = []
    for psi in range(2):
        grid, over = _backward_grid(tgt[psi], em, sst[:, 0], cap1, alpha1, rhs1, taper, MAX_TAPER_STEPS)
        refuse |= over
        B.append(grid)
    J = [np.where(np.isnan(b), -1, np.arange(b.shape[1])[None, :]).max(axis=1) for b in B]
    # Interior slots a tail can use after each kind of head: full steps on its grids plus the
    # partial slot. Bounds m - k for the head candidates.
    steps_f = [(~np.isnan(g)).sum(axis=1) + 1 for g in G]
    steps_b = [np.maximum(J[psi], 0) + 1 for psi in range(2)]
    Jc = [np.maximum(J[psi], 0) for psi in range(2)]
    BJ = [B[psi][rows, Jc[psi]] for psi in range(2)]

    # ---- partial jumps: from forward level G_i to the backward level inside [G_i, f(G_i)]
    live_f = [bool((~np.isnan(g[:, 0])).any()) for g in G]
    live_b = [bool((~np.isnan(b[:, 0])).any()) for b in B]
    jump = {}
    for f in range(NF):
        g = G[f]
        fg = step_up(g, cap1[:, None], alpha1[:, None], rhs1[:, None], True)
        for psi in range(2):
            b = B[psi]
            ge = (b[:, None, :] >= g[:, :, None]) & ~np.isnan(b)[:, None, :]
            js = ge.sum(axis=2) - 1
            jsc = np.clip(js, 0, b.shape[1] - 1)
            bj = b[rows[:, None], jsc]
            ok = (js >= 0) & ~np.isnan(g) & (bj <= fg) & (bj >= g)
            flat = rows[:, None] * b.shape[1] + jsc
            jump[f, psi] = (jsc, np.where(ok, bj - g, np.nan), ok, flat, bool(ok.any()) and live_f[f] and live_b[psi])

    # ---- terminal costs at uL
    C0, T0 = [], []
    for f in range(NF):
        g = G[f]
        fl = step_up(g, capL[:, None], alL[:, None], rhL[:, None], True)
        full_ok = uL_ok[:, None] & (fl <= need[:, None])
        part_ok = uL_ok[:, None] & (g < need[:, None]) & (fl > need[:, None])
        c_full = np.where(full_ok, qL[:, None] * (fl - g), _INF)
        c_part = np.where(part_ok, qL[:, None] * (need[:, None] - g), _INF)
        c = np.minimum(0.0, np.minimum(c_full, c_part))
        dec = np.where(c == 0.0, 0, np.where(c_full <= c_part, 1, 2)).astype(np.int8)
        C0.append(np.where(np.isnan(g), _INF, c))
        T0.append(dec)
    C1 = []
    for psi in range(2):
        b = B[psi]
        c = np.full(b.shape, _INF)
        c[:, 0] = np.where(np.isnan(b[:, 0]), _INF, 0.0 if psi == 0 else qL * (need - b[:, 0]))
        C1.append(c)

    # ---- head candidates
    qi = np.where(interior, q, np.inf)
    slot_by_rank = np.argsort(qi, axis=1, kind="stable")
    q_by_rank = np.take_along_axis(qi, slot_by_rank, axis=1)
    q_by_rank = np.where(np.isfinite(q_by_rank), q_by_rank, 0.0)

    # Each candidate: (tail phase, tail family, tail index or None for "last backward level",
    # constant cost, u0 energy, head count, partial energy or None, tau, qsum, prank).
    cands = []

    shared = {}
    same_order = q_offset is not None
    q0_shift = q_offset

    def head_cand(phase, fam, j, const, e_u0, k, z, valid, phi=None):
        k = np.where(valid, k, 0)
        v = np.flatnonzero(valid)
        if phase == 0:
            reach = steps_f[fam]
        elif phase == 1:
            reach = steps_b[fam]
        else:
            reach = np.zeros(n, np.int64)
        m_x = int(reach[v].max()) + 1 if v.size else 0
        tau = np.full((n, m_x + 1), -1, np.int64)
        qs = np.zeros((n, m_x + 1))
        pr = np.zeros((n, m_x + 1), np.int64)
        if v.size and phi is not None:
            # Heads that start from u0's state phi have sizes within one of the maximal head;
            # one shared computation serves them.
            if phi not in shared:
                base = np.maximum(kh[:, phi] - 1, 0)
                sv_ = np.flatnonzero(st_ok[:, phi])
                mx = int(max(steps_f[f][sv_].max() for f in range(NF)) if sv_.size else 0)
                mx = max(mx, int(max(steps_b[b][sv_].max() for b in range(2)) if sv_.size else 0)) + 1
                if same_order:
                    # Slot costs shared up to a per-car constant: heads depend only on the
                    # interior range and the size, so compute each distinct case once.
                    key = (u0[sv_] * (T + 1) + uL[sv_]) * (int(base.max()) + 1) + base[sv_]
                    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
                    rep = sv_[first]
                    ts, qss, prs = _head_candidates(slot_by_rank[rep], q_by_rank[rep], n_int[rep], base[rep], mx, 3)
                    inv = inv.ravel()
                    cnt = base[sv_][:, None] + np.arange(3)[None, :]
                    shift = (q0_shift[rep][inv] - q0_shift[sv_])[:, None] * cnt
                    out = (ts[inv], qss[inv] + shift[:, :, None], prs[inv])
                else:
                    out = _head_candidates(slot_by_rank[sv_], q_by_rank[sv_], n_int[sv_], base[sv_], mx, 3)
                shared[phi] = (sv_, base, mx, out)
            sv_, base, mx, (ts, qss, prs) = shared[phi]
            pos_in = np.full(n, -1)
            pos_in[sv_] = np.arange(sv_.size)
            d = k - base
            hit = v[(pos_in[v] >= 0) & (d[v] >= 0) & (d[v] <= 2) & (m_x <= mx)]
            if hit.size:
                pi, dd = pos_in[hit], d[hit]
                tau[hit] = ts[pi, dd, : m_x + 1]
                qs[hit] = qss[pi, dd, : m_x + 1]
                pr[hit] = prs[pi, dd, : m_x + 1]
            v = np.setdiff1d(v, hit, assume_unique=True)
        if v.size:
            tv, qv, pv = _head_candidates(slot_by_rank[v], q_by_rank[v], n_int[v], k[v], m_x)
            tau[v], qs[v], pr[v] = tv[:, 0], qv[:, 0], pv[:, 0]
        cands.append((phase, fam, j, const, e_u0, k, z, tau, qs, pr, False))

    def start_cand(phase, fam, j, const, e_u0, valid):
        tau = np.where(valid, -2, -1)[:, None]
        cands.append((phase, fam, j, const, e_u0, np.zeros(n, np.int64), None, tau, np.zeros((n, 1)), None, True))

    u0_e = [lb, f0 - s_base]
    # Ends of a head that carries a partial slot: the last backward level at or below E_m
    # (phase 1), exactly E_m where the next slot is tight on both power and taper (phase 0,
    # grid 2), or the level from which uL at its limit ends exactly at E_m (phase 2: uL is
    # that doubly tight slot and nothing follows).
    ym = step_down(em, capL, alL, rhL, taper)
    ends = [(1, psi, None, BJ[psi], (J[psi] >= 0) & (BJ[psi] <= em)) for psi in range(2)]
    ends.append((0, 2, 0, em, ~np.isnan(G[2][:, 0])))
    ends.append((2, 0, 0, ym, uL_ok & (em < need) & (ym >= sst[:, 0])))
    tail2 = qL * (em - ym)
    for phi in range(2):
        # A: maximal translation head, tail from forward grid phi
        head_cand(0, phi, 0, cst[:, phi], u0_e[phi], kh[:, phi], None, st_ok[:, phi] & ~np.isnan(G[phi][:, 0]), phi)
        # B / E: head with a partial slot ending on the last backward level / exactly at E_m
        for phase, fam, j, top, valid in ends:
            e = top - sst[:, phi]
            ok = st_ok[:, phi] & valid & (e >= 0)
            with np.errstate(invalid="ignore"):
                kk = np.ceil(e / cap1) - 1
            kk = np.where(ok, np.maximum(np.nan_to_num(kk, nan=0.0), 0), 0).astype(np.int64)
            z = e - kk * cap1
            slots = np.where(ok & (e > 1e-12), kk + 1, 0)
            head_cand(phase, fam, j, cst[:, phi], u0_e[phi], slots, z, ok, phi)
    # u0 as the partial slot: ends on a backward level (C) or at E_m (G) with no head, or
    # whole slots below the last backward level (D) or below E_m (F) with a head
    for psi in range(2):
        b = B[psi]
        for j in range(b.shape[1]):
            ok = u0_free & (b[:, j] > sst[:, 0]) & (b[:, j] <= f0)
            start_cand(1, psi, j, q0 * (b[:, j] - s_base), b[:, j] - s_base, ok)
    for phase, fam, j, top, valid in ends[2:]:
        ok = u0_free & valid & (top > sst[:, 0]) & (top <= f0)
        start_cand(phase, fam, j, q0 * (top - s_base), top - s_base, ok)
    for phase, fam, j, top, valid in ends:
        with np.errstate(invalid="ignore"):
            kk = np.ceil((top - f0) / cap1)
        kk = np.maximum(np.nan_to_num(kk, nan=1.0), 1).astype(np.int64)
        level = top - kk * cap1
        ok = u0_free & valid & (level > sst[:, 0]) & (level <= f0)
        head_cand(phase, fam, j, q0 * (level - s_base), level - s_base, kk, None, ok)

    # ---- backward DP over the interior slots, recording cost-to-go at candidate entry states
    first_needed = np.full(n, T, np.int64)
    for cand in cands:
        tau = cand[7]
        entry = np.where(tau == -2, (u0 + 1)[:, None], tau)
        entry = np.where(tau == -1, T, entry)
        first_needed = np.minimum(first_needed, entry.min(axis=1))
    first_needed = np.minimum(first_needed, uL)
    t_lo = int(first_needed.min()) if n else 0
    t_hi = int(uL.max()) if n else 0
    t_lo = min(t_lo, t_hi)
    span = max(t_hi - t_lo + 1, 1)
    dG = [np.diff(G[f], axis=1) for f in range(NF)]
    dB = [B[psi][:, :-1] - B[psi][:, 1:] for psi in range(2)]
    rec0, rec1, at_start1, dec0, dec1, dec_row = _tail_dp(
        first_needed, t_lo, t_hi, q, interior, u0, C0, C1, dG, dB, jump, Jc, live_f, live_b
    )

    # ---- evaluate candidates
    best_val = np.full(n, _INF)
    best_ci = np.full(n, -1)
    best_s = np.zeros(n, np.int64)
    for ci, (phase, fam, j, const, e_u0, k, z, tau, qs, pr, at0) in enumerate(cands):
        ok = tau != -1
        if not ok.any():
            continue
        start = np.where(tau == -2, (u0 + 1)[:, None], tau)
        ti = np.clip(start - t_lo, 0, span - 1)
        if phase == 2:
            tail = tail2[:, None]
        elif at0 and phase == 1:
            tail = at_start1[fam][:, j][:, None]
        elif phase == 0:
            tail = rec0[fam][ti, rows[:, None]]
        else:
            tail = rec1[fam][ti, rows[:, None]]
        head = qs * cap1[:, None]
        if z is not None:
            prc = np.clip(pr, 0, q_by_rank.shape[1] - 1)
            head = head - (cap1 - z)[:, None] * np.take_along_axis(q_by_rank, prc, axis=1)
        head = np.where(tau == -2, 0.0, head)
        val = np.where(ok, const[:, None] + head + tail, _INF)
        sbest = val.argmin(axis=1)
        vbest = val[rows, sbest]
        better = vbest < best_val
        best_val = np.where(better, vbest, best_val)
        best_ci = np.where(better, ci, best_ci)
        best_s = np.where(better, sbest, best_s)
    refuse |= ~np.isfinite(best_val)

    # ---- rebuild the plans
    x = np.zeros((n, T))
    phase_now = np.full(n, -1)
    fam_now = np.zeros(n, np.int64)
    idx = np.zeros(n, np.int64)
    tau_sel = np.full(n, T, np.int64)
    ranks_all = np.argsort(slot_by_rank, axis=1, kind="stable")  # rank of each slot
    for ci, (phase, fam, j, const, e_u0, k, z, tau, qs, pr, at0) in enumerate(cands):
        sel = (best_ci == ci) & ~refuse
        if not sel.any():
            continue
        r = rows[sel]
        s = best_s[sel]
        tt = tau[r, s]
        tau_sel[r] = np.where(tt == -2, u0[r] + 1, tt)
        x[r, u0[r]] = e_u0[r]
        kk = k[r]
        has_head = (kk > 0) & (tt != -2)
        if has_head.any():
            rr = r[has_head]
            m = kk[has_head] + s[has_head]
            mask = interior[rr] & (ranks_all[rr] < m[:, None])
            head = mask & (np.cumsum(mask, axis=1) <= kk[has_head][:, None])
            x[rr] += np.where(head, cap1[rr][:, None], 0.0)
            if z is not None:
                pslot = slot_by_rank[rr, pr[rr, s[has_head]]]
                x[rr, pslot] -= cap1[rr] - z[rr]
        if phase == 2:
            x[r, uL[r]] += em[r] - ym[r]
            continue
        phase_now[r] = phase
        fam_now[r] = fam
        idx[r] = Jc[fam][r] if (phase == 1 and j is None) else j
    live = ~refuse
    for t in range(t_lo, t_hi):
        on = live & interior[:, t] & (t >= tau_sel)
        if not on.any():
            continue
        ti = t - t_lo
        for f in range(NF):
            sel = on & (phase_now == 0) & (fam_now == f)
            if not sel.any():
                continue
            r = rows[sel]
            i = idx[r]
            d = dec0[f][ti, dec_row[r], i]
            full = d == 1
            if full.any():
                rf = r[full]
                x[rf, t] = dG[f][rf, i[full]]
                idx[rf] += 1
            for psi in range(2):
                jp = d == 2 + psi
                if jp.any():
                    rp = r[jp]
                    jsc, energy = jump[f, psi][:2]
                    x[rp, t] = energy[rp, i[jp]]
                    phase_now[rp], fam_now[rp], idx[rp] = 1, psi, jsc[rp, i[jp]]
        for psi in range(2):
            sel = on & (phase_now == 1) & (fam_now == psi)
            if not sel.any():
                continue
            r = rows[sel]
            jj = idx[r]
            okj = jj >= 1
            d = np.zeros(r.shape, bool)
            d[okj] = dec1[psi][ti, dec_row[r[okj]], jj[okj]]
            if d.any():
                rf = r[d]
                x[rf, t] = dB[psi][rf, jj[d] - 1]
                idx[rf] -= 1
    for f in range(NF):
        sel = live & (phase_now == 0) & (fam_now == f)
        if sel.any():
            r = rows[sel]
            i = idx[r]
            g = G[f][r, i]
            d = T0[f][r, i]
            fl = step_up(g, capL[r], alL[r], rhL[r], True)
            x[r, uL[r]] += np.where(d == 1, fl - g, np.where(d == 2, need[r] - g, 0.0))
    sel = live & (phase_now == 1) & (fam_now == 1)
    if sel.any():
        r = rows[sel]
        x[r, uL[r]] += need[r] - B[1][r, 0]
    x[refuse] = 0.0
    return x, ~refuse
