package safety

// QueuedChecks is how many checks wait for a request slot of c.
func QueuedChecks(c *Client) int { return c.batches.Queued() }
