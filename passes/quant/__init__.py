"""slimcc.passes.quant"""
