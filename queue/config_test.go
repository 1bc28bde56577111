package queue_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/queue"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		cfg   queue.Config
		field string // "" = valid
	}{
		{"defaults are valid", queue.Config{}, ""},
		{"the original TopicFilter mapping is valid", queue.Config{Schema: "app", Table: "TopicFilter", Mapped: true,
			Columns: queue.Columns{ID: "topicFilterId", Required: "influencerRecalcReqd", Due: "influencerRecalcDate",
				Priority: "influencerPriority", Running: "influencerRunning"}}, ""},
		{"injection through a table name is refused", queue.Config{Table: "topic`; DROP TABLE x; --"}, "table"},
		{"a dotted schema is refused (one identifier only)", queue.Config{Schema: "a.b"}, "schema"},
		{"an all-digit column is refused", queue.Config{Columns: queue.Columns{Due: "123"}}, "columns.due"},
		{"65 characters is too long", queue.Config{MetaSchema: strings.Repeat("x", 65)}, "meta_schema"},
		{"two roles on one column are refused", queue.Config{Columns: queue.Columns{Due: "Running"}}, "columns.running"},
		{"a lease under a second is refused", queue.Config{Lease: 500 * time.Millisecond}, "lease"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.WithDefaults().Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var ce *queue.ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, queue.ErrConfig) {
				t.Fatalf("got %v, want a ConfigError on %s", err, tc.field)
			}
			if tc.field != "lease" && tc.field != "columns.running" && !errors.Is(err, ident.ErrInvalid) {
				t.Fatalf("%v does not wrap ident.ErrInvalid", err)
			}
		})
	}
}

// TestDefaultSchemaFile keeps sql/schema.sql equal to the DDL nonqueue
// runs for its default configuration (`make schema` rewrites it).
func TestDefaultSchemaFile(t *testing.T) {
	t.Parallel()
	want := queue.Config{}.WithDefaults().Script()
	got, err := os.ReadFile("../sql/schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("sql/schema.sql is out of date: run make schema")
	}
}

// TestMappedDDLOnlyAlters: a mapped table is never created or dropped, only
// given the protocol columns it lacks, idempotently.
func TestMappedDDLOnlyAlters(t *testing.T) {
	t.Parallel()
	cfg := queue.Config{Schema: "app", Table: "TopicFilter", Mapped: true, MetaSchema: "nonqueue"}.WithDefaults()
	ddl := cfg.DDL()
	if !strings.HasPrefix(ddl[0], "ALTER TABLE `app`.`TopicFilter`") {
		t.Fatalf("first statement: %s", ddl[0])
	}
	for _, s := range ddl {
		if s == cfg.RequestTrigger().Create() {
			continue // a trigger on the table, not a table (TestRequestTriggerSQL)
		}
		if strings.Contains(s, "`app`") && (strings.Contains(s, "CREATE") || strings.Contains(s, "DROP")) {
			t.Fatalf("mapped DDL creates or drops in the application schema: %s", s)
		}
	}
	n := 0
	for _, s := range ddl {
		if strings.HasPrefix(s, "ALTER TABLE `app`.`TopicFilter`") {
			n += strings.Count(s, "ADD COLUMN IF NOT EXISTS")
			// Online only: MariaDB refuses rather than copy or lock.
			if !strings.HasSuffix(s, "ALGORITHM=INSTANT") && !strings.HasSuffix(s, "ALGORITHM=INPLACE, LOCK=NONE") {
				t.Errorf("ALTER without an online clause: %s", s)
			}
		}
	}
	if n != 11 {
		t.Fatalf("%d columns added, want 11", n)
	}
}

// TestRequestTriggerSQL: the request trigger is the last statement of the
// schema, on the configured table, in its schema, with the mapped column
// names; its body is one statement with no ";" (the printed script runs
// in the mariadb client as it is); a table name too long for the
// trigger's name gets a hashed one that is still a valid identifier.
func TestRequestTriggerSQL(t *testing.T) {
	t.Parallel()
	mapped := queue.Config{Schema: "app", Table: "TopicFilter", Mapped: true, MetaSchema: "nonqueue",
		Columns: queue.Columns{ID: "topicFilterId", Required: "influencerRecalcReqd", Due: "influencerRecalcDate",
			Priority: "influencerPriority", Running: "influencerRunning", Active: "active"}}.WithDefaults()
	tr := mapped.RequestTrigger()
	ddl := mapped.DDL()
	if last := ddl[len(ddl)-1]; last != tr.Create() {
		t.Fatalf("last statement is not the trigger: %s", last)
	}
	cond := "NEW.`request_version` <=> OLD.`request_version` AND " +
		"NEW.`influencerRunning` <=> OLD.`influencerRunning` AND NEW.`influencerRecalcReqd` > 0 AND " +
		"NOT (NEW.`influencerRecalcReqd` <=> OLD.`influencerRecalcReqd` AND NEW.`influencerRecalcDate` <=> OLD.`influencerRecalcDate`)"
	// A request also unparks (attempts reset); the version is bumped
	// last, since cond reads it.
	want := "CREATE OR REPLACE TRIGGER `app`.`nq_request_TopicFilter` BEFORE UPDATE ON `app`.`TopicFilter` FOR EACH ROW\n" +
		"SET NEW.`attempts` = IF(" + cond + " AND NEW.`parked_at` IS NOT NULL, 0, NEW.`attempts`), " +
		"NEW.`parked_at` = IF(" + cond + ", NULL, NEW.`parked_at`), " +
		"NEW.`request_version` = NEW.`request_version` + IF(" + cond + ", 1, 0)"
	if tr.Create() != want {
		t.Fatalf("trigger:\n%s\nwant\n%s", tr.Create(), want)
	}
	if strings.Contains(tr.Body, ";") {
		t.Fatalf("trigger body has a ';': %s", tr.Body)
	}
	if !strings.Contains(mapped.Script(), tr.Create()+";\n") {
		t.Fatal("schema print lacks the trigger")
	}
	own := queue.Config{}.WithDefaults().RequestTrigger()
	if own.Schema != "nonqueue" || own.Table != "topic" || own.Name != "nq_request_topic" {
		t.Fatalf("own table's trigger: %+v", own)
	}
	long := queue.Config{Table: strings.Repeat("t", 64)}.WithDefaults()
	if err := long.Validate(); err != nil {
		t.Fatal(err)
	}
	name := long.RequestTrigger().Name
	if len(name) > 64 || ident.Validate(name) != nil || name == long.RequestTrigger().Table {
		t.Fatalf("trigger name for a 64-character table: %q", name)
	}
}
