package main

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// zeroMeansDefault are the integer keys whose 0 the loader replaces with a
// default. Every duration key is treated the same way without being
// listed here: each one's 0 is replaced by a default (or, for a new key,
// would be by the pattern the packages follow). A key whose explicit 0 is
// meaningful must be added to zeroAllowed instead.
var zeroMeansDefault = map[string]bool{
	"primary.port": true, "replica.port": true, "ssh.port": true,
	"topics.max_attempts": true,
	"worker.id_base":      true, "worker.id_multiplier": true, "worker.max_procs": true,
	"results.backup_keep": true,
	// 0 would silently mean "off", the default.
	"throttle.max_threads_running": true, "throttle.max_concurrent_publishes": true,
	"follower.server_id": true,
}

// zeroAllowed are duration keys for which an explicit 0 has a meaning of
// its own.
var zeroAllowed = map[string]bool{
	"topics.refresh_interval": true, // 0: no periodic refresh (also the default)
	"worker.start_timeout":    true, // 0: wait for the servers as long as it takes (also the default)
}

var durationType = reflect.TypeFor[time.Duration]()

// checkExplicitZeros refuses an explicit 0 where the configuration would
// silently take the default instead (lease = "0s" became 30s without a
// word), and a negative duration anywhere. Keys left out still get their
// defaults. It reads the keys the file sets (md) against the decoded c.
func checkExplicitZeros(md toml.MetaData, c *Config) error {
	root := reflect.ValueOf(c).Elem()
	for _, key := range md.Keys() {
		v, ok := fieldAt(root, key)
		if !ok {
			continue
		}
		name := key.String()
		switch {
		case v.Type() == durationType:
			d := time.Duration(v.Int())
			if d < 0 {
				return &ConfigError{Key: name, Err: fmt.Errorf("%v: a duration here must not be negative", d)}
			}
			if d == 0 && !zeroAllowed[name] {
				return &ConfigError{Key: name, Err: fmt.Errorf("%v is refused: 0 here would silently mean the default; leave the key out for the default, or give a positive duration", d)}
			}
		case zeroMeansDefault[name] && v.CanInt() && v.Int() == 0, zeroMeansDefault[name] && v.CanUint() && v.Uint() == 0:
			return &ConfigError{Key: name, Err: fmt.Errorf("0 is refused: 0 here would silently mean the default; leave the key out for the default, or give another value")}
		}
	}
	return nil
}

// fieldAt follows key through the structs of root by their toml tags. It
// does not enter slices or maps (arrays of tables such as
// [[dashboard.replicas]]).
func fieldAt(root reflect.Value, key toml.Key) (reflect.Value, bool) {
	v := root
	for _, part := range key {
		if v.Kind() != reflect.Struct {
			return reflect.Value{}, false
		}
		f, ok := fieldByTag(v, part)
		if !ok {
			return reflect.Value{}, false
		}
		v = f
	}
	return v, true
}

func fieldByTag(v reflect.Value, name string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		tag, _, _ := strings.Cut(sf.Tag.Get("toml"), ",")
		if tag == name || tag == "" && strings.EqualFold(sf.Name, name) {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}
