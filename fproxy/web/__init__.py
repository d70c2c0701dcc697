"""fproxy.web"""
