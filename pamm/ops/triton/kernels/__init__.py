"""Triton kernels of the selective scan (Mamba-1) and of its fused multi-direction form, one module per
stage: :mod:`.forward`, :mod:`.state_carry`, :mod:`.backward` (with :mod:`.backward_steps` and its
split form :mod:`.backward_split`) and :mod:`.backward_tile`; :mod:`.common` holds the helpers.

Imported only once triton imports (:func:`pamm.ops.triton.launch.kernel_table`). Whether they run
compiled or under the interpreter is fixed when they are first imported: ``triton.jit`` reads
``TRITON_INTERPRET`` at decoration time.

Tensor layouts (all contiguous; ``(K)`` present only when the tensor differs per scan direction):

============  ==========================  ===============================================
tensor        layout                      note
============  ==========================  ===============================================
u, delta      ``[b, (K), d, L]``          any float dtype; math in fp32
A             ``[(K), d, n]``             fp32
B, C          ``[b, (K), G, n, L]``       channel ``c`` uses group ``c // (d // G)``; token order, or
                                          scan order per direction (``BC_SCAN_ORDER``)
D, bias       ``[(K), d]``                fp32
z, out, dout  ``[b, d, L]``               row-major token order
perm          ``[K, L]`` int32            scan step ``t`` of direction ``k`` visits token ``perm[k, t]``
ckpt          ``[b, K, n_ckpt, d, n]``    fp32 state *before* every CKPT-th token, for the backward
scratch       ``[S, R, BLOCK_D, BN]``     fp32 states of one checkpoint interval in each of S slots, one
                                          per running token-backward program (``BN`` = ``BLOCK_N``; R =
                                          CKPT rows, or with ``SPLIT`` CKPT + 1 states and SUB + 1 adjoints)
seg_*         ``[b, K, n_seg, d, (n)]``   fp32 carries between segments (long-l regime)
partials      ``[b, K, n_seg, d, (n)]``   fp32 per-program dA / dD / dbias, summed by the caller
============  ==========================  ===============================================

A program owns ``BLOCK_D`` channels of one group, one batch element, one direction and one *segment*
of the sequence. With one segment per sequence this is the many-channels regime; with several (few
channels, long l), a first pass scans each segment from a zero state, the state-carry kernel chains
the segment ends, and a second pass rescans each segment from its true initial state.

* forward: a ``(BLOCK_D, CHUNK)`` token tile in registers, parallel over l, one state column ``n`` at a
  time (one-dimensional associative scans over coalesced token rows), as mamba-ssm's CUDA kernel is
  organised; it also drops the state before every ``CKPT``-th token for the backward.
* token backward: one token per loop step with the ``(BLOCK_D, n)`` state in registers; per checkpoint
  interval a forward loop recomputes the states into the program's scratch rows, then a reverse loop
  carries ``a_t·G_t`` (``G_t`` the adjoint of ``h_t``) and writes every gradient once per interval.
  ``associative_scan(reverse=True)`` is avoided: its compiled results for non-commutative combines have
  been wrong (triton-lang/triton#4362).
* tile backward: the forward's structure run backwards without a flip: the adjoint scan is a forward
  scan over the tile *loaded* in reverse order and comes back to token order through memory;
  256-token checkpoint intervals, scratch without an n axis.
"""
