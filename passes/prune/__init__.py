"""slimcc.passes.prune"""
