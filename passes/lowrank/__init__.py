"""slimcc.passes.lowrank"""
