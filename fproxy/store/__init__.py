"""fproxy.store"""
