"""wharf-balancer: ALB-style HTTP(S) load balancing on trio (NLB, Gateway LB: planned)."""
