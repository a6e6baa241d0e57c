"""wharf-balancer: ALB-, NLB- and Gateway-LB-style load balancing on trio."""
