"""One way slimcc rewrites Relax calls: a pattern, a replacement that may add TIR kernels, every function."""

from __future__ import annotations

from slimcc.targets.tvm_import import ensure_tvm


def rewrite_calls(mod, pattern, make_replace, name: str):
    """Replace every call matching `pattern` in every Relax function of `mod`, then drop dead code.

    `make_replace(builder)` returns the `replace(call, matches)` callback of `rewrite_call`; the
    BlockBuilder lets it add kernels (`te_kernels.call_te_kernel`) to the module.
    """
    tvm = ensure_tvm()
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    @tvm.transform.module_pass(opt_level=0, name=name)
    def rewrite(mod, _ctx):
        builder = relax.BlockBuilder(mod)
        replace = make_replace(builder)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                builder.update_func(gvar, rewrite_call(pattern, replace, func))
        return builder.get()

    return tvm.transform.Sequential([rewrite, relax.transform.DeadCodeElimination()])(mod)
