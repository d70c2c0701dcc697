"""fproxy.state"""
