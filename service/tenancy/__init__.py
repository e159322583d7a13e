"""Who may do what, and how much: authentication, API keys, tenants, grants and allowlists, admission
(rate limits, quotas), request guards, usage reports."""
