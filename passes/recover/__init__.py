"""slimcc.passes.recover"""
