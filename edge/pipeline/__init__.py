"""The edge's request pipeline, one step a module, each value computed once.

:class:`~edgecloud.edge.service.EdgeService` runs a query through them in this order::

    request.QueryRequest   what was asked, resolved (route, budget, limits) and checked once (check)
      -> verdict.LocalVerdict   the edge model's answer, confidence, the query's difficulty and
                                triage's decision: triage and the cloud's hint read the same figures
      -> result.StreamItem...   route, reasoning, answer, then done with the typed result.QueryResult,
                                which the HTTP routers serialise once
"""
