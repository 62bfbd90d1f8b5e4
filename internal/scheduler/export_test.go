package scheduler

// StopTakingSubmits stops s's submit consumer and keeps its queues as they
// are (StopSubmits would hand them back): the next submits go to another
// scheduler.
func (s *Scheduler) StopTakingSubmits() {
	s.submits.Stop()
	s.submits = nil
}
