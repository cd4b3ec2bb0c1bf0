package server

// Routes returns the patterns s's API listener serves, "/v1/" being the
// REST gateway.
func Routes(s *Server) []string { return s.routes }

// RESTWatchEventsRoute is the route the gateway serves by hand.
const RESTWatchEventsRoute = "GET " + restWatchEventsPath
