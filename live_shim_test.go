package wsauth

// liveCount is the number of live connections in the process's registry.
func liveCount() int { return liveConns.count() }
