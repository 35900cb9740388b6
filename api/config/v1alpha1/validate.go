package v1alpha1

import (
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Validate returns every problem of the GPUConfig with its field path, or nil.
func (c *GPUConfig) Validate() error {
	return c.validate().ToAggregate()
}

func (c *GPUConfig) validate() field.ErrorList {
	return c.Sharing.validate(field.NewPath("sharing"), true)
}

// Validate returns every problem of the MIGConfig with its field path, or nil.
func (c *MIGConfig) Validate() error {
	return c.validate().ToAggregate()
}

func (c *MIGConfig) validate() field.ErrorList {
	path := field.NewPath("sharing")
	errs := c.Sharing.validate(path, false)
	// The time slice is a property of the physical GPU: setting it for one
	// partition would change it for every other tenant's partition.
	if c.Sharing != nil && c.Sharing.TimeSlicing.IntervalOrDefault() != DefaultTimeSlice {
		errs = append(errs, field.Forbidden(path.Child("timeSlicing", "interval"), "a MIG partition always uses the default time slice"))
	}
	return errs
}

func (s *Sharing) validate(path *field.Path, mpsAllowed bool) field.ErrorList {
	if s == nil {
		return nil
	}
	var errs field.ErrorList
	switch s.Strategy {
	case TimeSlicingStrategy:
	case MPSStrategy:
		if !mpsAllowed {
			errs = append(errs, field.NotSupported(path.Child("strategy"), s.Strategy, []string{string(TimeSlicingStrategy)}))
		}
	case "":
		errs = append(errs, field.Required(path.Child("strategy"), "TimeSlicing or MPS"))
	default:
		supported := []string{string(TimeSlicingStrategy)}
		if mpsAllowed {
			supported = append(supported, string(MPSStrategy))
		}
		errs = append(errs, field.NotSupported(path.Child("strategy"), s.Strategy, supported))
	}
	if s.TimeSlicing != nil {
		p := path.Child("timeSlicing")
		if s.Strategy != TimeSlicingStrategy {
			errs = append(errs, field.Forbidden(p, "only with strategy TimeSlicing"))
		}
		switch s.TimeSlicing.Interval {
		case "", DefaultTimeSlice, ShortTimeSlice, MediumTimeSlice, LongTimeSlice:
		default:
			errs = append(errs, field.NotSupported(p.Child("interval"), s.TimeSlicing.Interval,
				[]string{string(DefaultTimeSlice), string(ShortTimeSlice), string(MediumTimeSlice), string(LongTimeSlice)}))
		}
	}
	if s.MPS != nil {
		p := path.Child("mps")
		if s.Strategy != MPSStrategy {
			errs = append(errs, field.Forbidden(p, "only with strategy MPS"))
		}
		if v := s.MPS.DefaultActiveThreadPercentage; v != nil && (*v < 1 || *v > 100) {
			errs = append(errs, field.Invalid(p.Child("defaultActiveThreadPercentage"), *v, "must be from 1 to 100"))
		}
		if q := s.MPS.DefaultPinnedDeviceMemoryLimit; q != nil && q.Sign() <= 0 {
			errs = append(errs, field.Invalid(p.Child("defaultPinnedDeviceMemoryLimit"), q.String(), "must be positive"))
		}
	}
	return errs
}

// IntervalOrDefault returns the time-slice interval, Default when unset.
func (t *TimeSlicingConfig) IntervalOrDefault() TimeSliceInterval {
	if t == nil || t.Interval == "" {
		return DefaultTimeSlice
	}
	return t.Interval
}
