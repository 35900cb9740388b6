package prepare

import "errors"

// Step names a point in prepare or unprepare after which the plugin could
// crash. Tests inject a crash after each one through WithStepHook and check
// that a new Preparer on the same state cleans up.
type Step string

// Steps of prepare, in order. MIG and sharing steps occur per device.
const (
	StepPrepareRecorded  Step = "prepare-recorded"
	StepMIGModeOn        Step = "mig-mode-on"
	StepMIGCreated       Step = "mig-created"
	StepMIGRecorded      Step = "mig-recorded"
	StepMPSStarted       Step = "mps-started"
	StepTimeSliced       Step = "time-sliced"
	StepCDIWritten       Step = "cdi-written"
	StepPrepareCompleted Step = "prepare-completed"
)

// Steps of unprepare (and of rolling back a half-made claim), in order.
const (
	StepUnprepareRecorded  Step = "unprepare-recorded"
	StepCDIRemoved         Step = "cdi-removed"
	StepMIGDestroyed       Step = "mig-destroyed"
	StepMIGModeOff         Step = "mig-mode-off"
	StepMIGForgotten       Step = "mig-forgotten"
	StepMPSStopped         Step = "mps-stopped"
	StepUnprepareCompleted Step = "unprepare-completed"
)

// PrepareSteps and UnprepareSteps list the steps in order.
var (
	PrepareSteps   = []Step{StepPrepareRecorded, StepMIGModeOn, StepMIGCreated, StepMIGRecorded, StepMPSStarted, StepTimeSliced, StepCDIWritten, StepPrepareCompleted}
	UnprepareSteps = []Step{StepUnprepareRecorded, StepCDIRemoved, StepMIGDestroyed, StepMIGModeOff, StepMIGForgotten, StepMPSStopped, StepUnprepareCompleted}
)

// abandoned marks an error from the step hook: the operation stops where it
// is, without any rollback, as if the process had died.
type abandoned struct{ err error }

func (a abandoned) Error() string { return "abandoned: " + a.err.Error() }
func (a abandoned) Unwrap() error { return a.err }

func isAbandoned(err error) bool {
	var a abandoned
	return errors.As(err, &a)
}

func (p *Preparer) step(s Step) error {
	if p.hook == nil {
		return nil
	}
	if err := p.hook(s); err != nil {
		return abandoned{err}
	}
	return nil
}
