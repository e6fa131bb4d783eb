{{/*
Names, labels and shared snippets of the Keyward chart.
*/}}

{{- define "keyward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: "<release>-keyward" unless the release name already says keyward. */}}
{{- define "keyward.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "keyward.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keyward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keyward.labels" -}}
helm.sh/chart: {{ include "keyward.chart" . }}
{{ include "keyward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyward
{{- end }}

{{/* The image: repository@digest when image.digest is set (pinned), repository:tag otherwise. */}}
{{- define "keyward.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
A component's topologySpreadConstraints: each entry as given, with the component's pod labels as its
labelSelector unless it has one. Called with (dict "root" $ "component" "gateway" "constraints" LIST).
*/}}
{{- define "keyward.topologySpread" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- range .constraints }}
{{- $constraint := deepCopy . }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $labels := include "keyward.selectorLabels" $root | fromYaml }}
{{- $_ := set $labels "app.kubernetes.io/component" $component }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $labels) }}
{{- end }}
- {{ toYaml $constraint | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/* The metadata.namespace line of every resource: the release's namespace. */}}
{{- define "keyward.namespace" -}}
namespace: {{ .Release.Namespace | quote }}
{{- end }}

{{- define "keyward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keyward.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Paths inside the image and the pods. */}}
{{- define "keyward.venv" -}}/opt/keyward/venv{{- end }}
{{- define "keyward.socketDir" -}}/sockets{{- end }}
{{- define "keyward.spoolDir" -}}/var/spool/keyward{{- end }}
{{- define "keyward.providerKeysDir" -}}/etc/keyward/provider-keys{{- end }}
{{- define "keyward.envoyConfigDir" -}}/etc/envoy{{- end }}
{{/* Envoy's admin interface: a 0600 Unix socket in an emptyDir only the envoy container mounts. */}}
{{- define "keyward.envoyAdminDir" -}}/var/run/envoy-admin{{- end }}
{{- define "keyward.envoyAdminSocket" -}}/var/run/envoy-admin/admin.sock{{- end }}
{{/* Where authz asks Envoy to reopen its logs: a 0660 Unix socket in the shared "sockets" emptyDir. */}}
{{- define "keyward.envoyControlSocket" -}}/sockets/envoy-control.sock{{- end }}
{{/*
Envoy's audit log (one JSON line per finished request) in the "outcomes" emptyDir, which both containers
mount: Envoy writes it, authz reads it, renames it to <name>.1 to rotate it and deletes that.
*/}}
{{- define "keyward.outcomesDir" -}}/var/lib/keyward-outcomes{{- end }}
{{- define "keyward.envoyAuditLog" -}}/var/lib/keyward-outcomes/envoy-audit.jsonl{{- end }}
{{- define "keyward.postgresCaDir" -}}/etc/keyward/postgres-ca{{- end }}

{{/* Secrets: the chart's own unless an existing one is named. */}}
{{- define "keyward.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "keyward.fullname" .) }}
{{- end }}
{{- end }}

{{- define "keyward.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else }}
{{- "DATABASE_URL" }}
{{- end }}
{{- end }}

{{- define "keyward.appSecretName" -}}
{{- default (printf "%s-keys" (include "keyward.fullname" .)) .Values.keyward.existingSecret }}
{{- end }}

{{/* Never mounted into authz, the control plane or the migration Job: Envoy's container only. */}}
{{- define "keyward.providerSecretName" -}}
{{- default (printf "%s-provider-keys" (include "keyward.fullname" .)) .Values.providers.existingSecret }}
{{- end }}

{{/*
Environment of every Postgres client (authz, control plane, migrations): the URL and the TLS settings.
asyncpg (authz) and SQLAlchemy's asyncpg dialect (control plane) disagree on an "sslmode" URL parameter,
so TLS is set with libpq's environment variables, which asyncpg reads in both.
*/}}
{{- define "keyward.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.databaseSecretName" . }}
      key: {{ include "keyward.databaseSecretKey" . }}
{{- with .Values.database.sslMode }}
- name: PGSSLMODE
  value: {{ . | quote }}
{{- end }}
{{- if .Values.database.caSecret }}
- name: PGSSLROOTCERT
  value: {{ include "keyward.postgresCaDir" . }}/ca.crt
{{- end }}
{{- end }}

{{/* The migration Job's URL: the schema owner's when one is given, the application's otherwise. */}}
{{- define "keyward.migrationDatabaseEnv" -}}
{{- if .Values.database.migrationExistingSecret }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.migrationExistingSecret }}
      key: {{ .Values.database.migrationExistingSecretKey }}
{{- else if and .Values.database.migrationUrl (not .Values.database.existingSecret) }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.databaseSecretName" . }}
      key: MIGRATION_DATABASE_URL
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.databaseSecretName" . }}
      key: {{ include "keyward.databaseSecretKey" . }}
{{- end }}
{{- with .Values.database.sslMode }}
- name: PGSSLMODE
  value: {{ . | quote }}
{{- end }}
{{- if .Values.database.caSecret }}
- name: PGSSLROOTCERT
  value: {{ include "keyward.postgresCaDir" . }}/ca.crt
{{- end }}
{{- end }}

{{/* authz's credential for the control plane's audit ingest (authz and the control plane). */}}
{{- define "keyward.ingestTokenEnv" -}}
- name: KEYWARD_INGEST_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.appSecretName" . }}
      key: {{ .Values.keyward.ingestTokenKey }}
{{- end }}

{{/* Where authz ships audit records: the control plane's Service, inside the cluster. */}}
{{- define "keyward.ingestUrl" -}}
{{- printf "http://%s-controlplane.%s.svc:%d/api/v1/audit/ingest" (include "keyward.fullname" .) .Release.Namespace (int64 .Values.controlplane.service.port) }}
{{- end }}

{{/* Signs every audit chain head (control plane only; the database never holds it). */}}
{{- define "keyward.auditSigningKeyEnv" -}}
- name: KEYWARD_AUDIT_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.appSecretName" . }}
      key: {{ .Values.keyward.auditSigningKeyKey }}
{{- end }}

{{/*
The control plane's browser-session secret (KEYWARD_SESSION_SECRET): signs sign-in state and console
sessions, derives CSRF tokens. The chart's own Secret always has it; in keyward.existingSecret it is
optional while OIDC is off (without it the console is off) and required with OIDC.
*/}}
{{- define "keyward.sessionSecretEnv" -}}
- name: KEYWARD_SESSION_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.appSecretName" . }}
      key: {{ .Values.keyward.sessionSecretKey }}
      {{- if not .Values.oidc.issuer }}
      optional: true
      {{- end }}
{{- end }}

{{/* Where OIDC sends browsers back to: oidc.redirectBase, or the control plane's external URL. */}}
{{- define "keyward.oidcRedirectBase" -}}
{{- trimSuffix "/" (default .Values.controlplane.externalUrl .Values.oidc.redirectBase) }}
{{- end }}

{{/* Sign-in with OpenID Connect (the control plane's KEYWARD_OIDC_* settings); nothing while oidc.issuer is empty. */}}
{{- define "keyward.oidcEnv" -}}
{{- if .Values.oidc.issuer }}
- name: KEYWARD_OIDC_ISSUER
  value: {{ .Values.oidc.issuer | quote }}
- name: KEYWARD_OIDC_CLIENT_ID
  value: {{ .Values.oidc.clientId | quote }}
{{- with .Values.oidc.cliClientId }}
- name: KEYWARD_OIDC_CLI_CLIENT_ID
  value: {{ . | quote }}
{{- end }}
{{- if .Values.oidc.clientSecret.existingSecret }}
- name: KEYWARD_OIDC_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.oidc.clientSecret.existingSecret }}
      key: {{ .Values.oidc.clientSecret.key }}
{{- end }}
- name: KEYWARD_OIDC_REDIRECT_BASE
  value: {{ include "keyward.oidcRedirectBase" . | quote }}
- name: KEYWARD_OIDC_SCOPES
  value: {{ .Values.oidc.scopes | quote }}
- name: KEYWARD_OIDC_JIT_PROVISIONING
  value: {{ .Values.oidc.jitProvisioning | quote }}
- name: KEYWARD_OIDC_GROUPS_CLAIM
  value: {{ .Values.oidc.groupsClaim | quote }}
- name: KEYWARD_OIDC_ADMIN_GROUPS
  value: {{ join "," .Values.oidc.adminGroups | quote }}
- name: KEYWARD_OIDC_AUDITOR_GROUPS
  value: {{ join "," .Values.oidc.auditorGroups | quote }}
- name: KEYWARD_OIDC_FINANCE_GROUPS
  value: {{ join "," .Values.oidc.financeGroups | quote }}
- name: KEYWARD_OIDC_SESSION_MINUTES
  value: {{ .Values.oidc.sessionMinutes | int64 | quote }}
- name: KEYWARD_OIDC_CLI_CREDENTIAL_HOURS
  value: {{ .Values.oidc.cliCredentialHours | int64 | quote }}
{{- end }}
{{- end }}

{{- define "keyward.tokenHashKeyEnv" -}}
- name: KEYWARD_TOKEN_HASH_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.appSecretName" . }}
      key: {{ .Values.keyward.tokenHashKeyKey }}
{{- end }}

{{- define "keyward.postgresCaVolume" -}}
{{- if .Values.database.caSecret }}
- name: postgres-ca
  secret:
    secretName: {{ .Values.database.caSecret }}
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}

{{- define "keyward.postgresCaMount" -}}
{{- if .Values.database.caSecret }}
- name: postgres-ca
  mountPath: {{ include "keyward.postgresCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* A container's security context: the shared one plus its own UID. Called with (dict "root" $ "uid" N). */}}
{{- define "keyward.containerSecurityContext" -}}
{{- $context := deepCopy .root.Values.containerSecurityContext }}
{{- $_ := set $context "runAsUser" (int .uid) }}
{{- $_ := set $context "runAsNonRoot" true }}
{{- toYaml $context }}
{{- end }}

{{/*
An upstream's URL, parsed like controlplane/stack/envoy_config.py's Upstream.parse (Python's urlsplit):
scheme, hostname (lower-case), port (default 443/80), path without trailing slashes, the Host header to
send, and the Envoy cluster type (STATIC for an IPv4 address, STRICT_DNS otherwise). Returned as YAML for
fromYaml.
*/}}
{{- define "keyward.upstream" -}}
{{- $url := urlParse . }}
{{- if or (not (has $url.scheme (list "http" "https"))) (not $url.hostname) }}
{{- fail (printf "upstream URL must be http(s)://host[:port][/path], got %q" .) }}
{{- end }}
{{- $default := ternary "443" "80" (eq $url.scheme "https") }}
{{- $port := $default }}
{{- if ne $url.host $url.hostname }}
{{- $port = last (splitList ":" $url.host) | default $default }}
{{- end }}
{{- if or (not (regexMatch "^[0-9]{1,5}$" $port)) (lt (int $port) 1) (gt (int $port) 65535) }}
{{- fail (printf "upstream URL must be http(s)://host[:port][/path] with a port from 1 to 65535, got %q" .) }}
{{- end }}
{{- $port = toString (int $port) }}
{{- $hostname := lower $url.hostname }}
scheme: {{ $url.scheme | quote }}
hostname: {{ $hostname | quote }}
port: {{ $port | quote }}
path: {{ regexReplaceAll "/+$" $url.path "" | quote }}
hostHeader: {{ ternary $hostname (printf "%s:%s" $hostname $port) (eq $port $default) | quote }}
clusterType: {{ ternary "STATIC" "STRICT_DNS" (regexMatch "^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$" $hostname) | quote }}
{{- end }}

{{/*
What the chart knows of each kind of upstream (files/upstream-kinds.json, generated from
authz/upstreams.py by k8s/sync_envoy_files.py): the routes it gets, the header its key goes in, the forms
of a name and of a region.
*/}}
{{- define "keyward.upstreamKinds" -}}
{{- .Files.Get "files/upstream-kinds.json" }}
{{- end }}

{{/*
Every upstream Envoy serves, in the local stack's order: openai and anthropic (providers.*), then the
operator's (the upstreams value). Each is name, kind, url, region (bedrock) and apiKey (inline, trials),
as JSON for fromJsonArray.
*/}}
{{- define "keyward.upstreams" -}}
{{- $builtin := list (dict "name" "openai" "kind" "openai" "url" .Values.providers.openai.url "apiKey" .Values.providers.openai.apiKey)
                     (dict "name" "anthropic" "kind" "anthropic" "url" .Values.providers.anthropic.url "apiKey" .Values.providers.anthropic.apiKey) }}
{{- toJson (concat $builtin .Values.upstreams) }}
{{- end }}

{{/*
The file an upstream's key is in, in the provider key Secret and in Envoy's provider-keys directory, as
controlplane/stack/envoy_config.py's secret_file names it: Bedrock's AWS shared-credentials file
<name>.credentials, everyone else's SDS file <name>.json. Called with the upstream.
*/}}
{{- define "keyward.upstreamKeyFile" -}}
{{- printf "%s.%s" .name (ternary "credentials" "json" (eq .kind "bedrock")) }}
{{- end }}

{{/*
KEYWARD_UPSTREAMS, the operator's upstreams for authz and the control plane (authz/upstreams.py): names,
kinds, URLs and regions as JSON, never a key. Absent without any, as the local stack leaves it.
*/}}
{{- define "keyward.upstreamsEnv" -}}
{{- if .Values.upstreams }}
{{- $list := list }}
{{- range .Values.upstreams }}
{{- $list = append $list (pick . "name" "kind" "url" "region") }}
{{- end }}
- name: KEYWARD_UPSTREAMS
  value: {{ toJson $list | quote }}
{{- end }}
{{- end }}

{{/*
Checks of the upstreams value (part of keyward.validate), as authz/upstreams.py checks KEYWARD_UPSTREAMS
(authz and the control plane would refuse to start on what it refuses), plus where each key comes from.
*/}}
{{- define "keyward.validateUpstreams" -}}
{{- $table := include "keyward.upstreamKinds" . | fromJson }}
{{- if not (kindIs "slice" .Values.upstreams) }}
{{- fail "upstreams must be a list of {name, kind, url, region, apiKey} (see values.yaml)" }}
{{- end }}
{{- $names := $table.builtin }}
{{- range $index, $upstream := .Values.upstreams }}
{{- $at := printf "upstreams[%d]" $index }}
{{- if not (kindIs "map" $upstream) }}
{{- fail (printf "%s must be a mapping with name, kind and url (and region for bedrock), got %s" $at (toJson $upstream)) }}
{{- end }}
{{- $unknown := without (keys $upstream) "name" "kind" "url" "region" "apiKey" }}
{{- if $unknown }}
{{- fail (printf "%s has unknown fields: %s (it takes name, kind, url, region, apiKey)" $at (join ", " (sortAlpha $unknown))) }}
{{- end }}
{{- $name := $upstream.name }}
{{- if not (and (kindIs "string" $name) (regexMatch $table.namePattern $name)) }}
{{- fail (printf "%s.name must be lower-case letters, digits and dashes (2 to 32, starting with a letter, not ending with a dash), got %s" $at (toJson $name)) }}
{{- end }}
{{- if has $name $table.builtin }}
{{- fail (printf "%s.name cannot be %s: that upstream is providers.%s" $at $name $name) }}
{{- end }}
{{- if has $name $names }}
{{- fail (printf "%s.name %s names an upstream twice" $at $name) }}
{{- end }}
{{- /* The one valid name that is already a cluster of the chart's Envoy (otel.endpoint's). */}}
{{- if eq $name "opentelemetry" }}
{{- fail (printf "%s.name cannot be opentelemetry: the gateway's tracing cluster has that name" $at) }}
{{- end }}
{{- $names = append $names $name }}
{{- if not (and (kindIs "string" $upstream.kind) (hasKey $table.kinds (toString $upstream.kind))) }}
{{- fail (printf "%s.kind must be one of %s, got %s" $at (join ", " (keys $table.kinds | sortAlpha)) (toJson $upstream.kind)) }}
{{- end }}
{{- if not (kindIs "string" $upstream.url) }}
{{- fail (printf "%s.url must be http(s)://host[:port][/path], got %s" $at (toJson $upstream.url)) }}
{{- end }}
{{- $url := urlParse $upstream.url }}
{{- if or (not (has $url.scheme (list "http" "https"))) (not $url.hostname) $url.userinfo (contains "?" $upstream.url) (contains "#" $upstream.url) }}
{{- fail (printf "%s.url must be http(s)://host[:port][/path], without credentials, a query or a fragment, got %q" $at $upstream.url) }}
{{- end }}
{{- $port := ternary "" (last (splitList ":" $url.host)) (eq $url.host $url.hostname) }}
{{- if and $port (or (not (regexMatch "^[0-9]{1,5}$" $port)) (lt (int $port) 1) (gt (int $port) 65535)) }}
{{- fail (printf "%s.url must have a port from 1 to 65535, got %q" $at $upstream.url) }}
{{- end }}
{{- if eq $upstream.kind "bedrock" }}
{{- if not (and (kindIs "string" $upstream.region) (regexMatch $table.regionPattern (toString $upstream.region))) }}
{{- fail (printf "%s.region must be an AWS region (us-east-1) for bedrock, got %s" $at (toJson $upstream.region)) }}
{{- end }}
{{- else if not (kindIs "invalid" $upstream.region) }}
{{- fail (printf "%s.region applies to bedrock only" $at) }}
{{- end }}
{{- if $.Values.providers.existingSecret }}
{{- if $upstream.apiKey }}
{{- fail (printf "%s.apiKey is only used without providers.existingSecret: put the key in that Secret as %s (k8s/README.md)" $at (include "keyward.upstreamKeyFile" $upstream)) }}
{{- end }}
{{- else }}
{{- $key := $upstream.apiKey }}
{{- if not (and (kindIs "string" $key) (regexMatch "^[!-~]+$" (toString $key))) }}
{{- fail (printf "%s.apiKey is required without providers.existingSecret (printable ASCII, no spaces); better, set providers.existingSecret (k8s/README.md)" $at) }}
{{- end }}
{{- if and (eq $upstream.kind "bedrock") (not (regexMatch "^[^:]+:[^:]+(:.+)?$" $key)) }}
{{- fail (printf "%s.apiKey of bedrock must be <access key id>:<secret access key>[:<session token>]" $at) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
gateway.authzTimeout in seconds, for authz (KEYWARD_ENVOY_AUTHZ_TIMEOUT_SECONDS): Envoy reads the value
as a protobuf Duration, always seconds with an "s" ("1s", "0.25s"; keyward.validate checks the form),
so one value serves both and they cannot disagree.
*/}}
{{- define "keyward.authzTimeoutSeconds" -}}
{{- trimSuffix "s" (toString .Values.gateway.authzTimeout) }}
{{- end }}

{{/* Checks that fail the install early with a readable message. */}}
{{- define "keyward.validate" -}}
{{- if and .Values.database.existingSecret .Values.database.migrationUrl (not .Values.database.migrationExistingSecret) }}
{{- fail "database.migrationUrl is only used without database.existingSecret: set database.migrationExistingSecret instead" }}
{{- end }}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) }}
{{- fail "set database.existingSecret (a Secret holding the Postgres URL) or database.url" }}
{{- end }}
{{- if not .Values.providers.existingSecret }}
{{- if or (not .Values.providers.openai.apiKey) (not .Values.providers.anthropic.apiKey) }}
{{- fail "set providers.existingSecret (a Secret with openai.json, anthropic.json and a file per upstream, see k8s/README.md) or both providers.*.apiKey" }}
{{- end }}
{{- end }}
{{- if lt (int .Values.gateway.terminationGracePeriodSeconds) (add (int .Values.gateway.preStopSleepSeconds) (int .Values.gateway.drainSeconds) 10) }}
{{- fail "gateway.terminationGracePeriodSeconds must be at least preStopSleepSeconds + drainSeconds + 10" }}
{{- end }}
{{- /* Envoy cannot redact headers: at debug and trace it logs every client's token (k8s/README.md). */}}
{{- if and (has (lower .Values.gateway.envoy.logLevel) (list "debug" "trace")) (not .Values.gateway.envoy.allowVerboseLogging) }}
{{- fail (printf "gateway.envoy.logLevel %q logs every request header, Keyward tokens included, and Envoy cannot redact them: use warn (or info), or set gateway.envoy.allowVerboseLogging=true for a short investigation" .Values.gateway.envoy.logLevel) }}
{{- end }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]{1,9})?s$" (toString .Values.gateway.authzTimeout)) }}
{{- fail (printf "gateway.authzTimeout must be seconds with an \"s\", like 1s or 0.5s, got %q" (toString .Values.gateway.authzTimeout)) }}
{{- end }}
{{- $authzTimeout := float64 (include "keyward.authzTimeoutSeconds" .) }}
{{- if or (le $authzTimeout 0.0) (gt $authzTimeout 60.0) }}
{{- fail "gateway.authzTimeout must be more than 0s and at most 60s (authz refuses a longer one)" }}
{{- end }}
{{- if lt (int64 .Values.gateway.auditLog.rotateBytes) 65536 }}
{{- fail "gateway.auditLog.rotateBytes must be at least 65536 (authz refuses less)" }}
{{- end }}
{{- range $name := list "organization" "project" }}
{{- $value := index $.Values.providers.openai $name }}
{{- if and $value (not (regexMatch "^[!-~]+$" $value)) }}
{{- fail (printf "providers.openai.%s must be printable ASCII without spaces (it is sent as an HTTP header)" $name) }}
{{- end }}
{{- end }}
{{- include "keyward.validateUpstreams" . }}
{{- include "keyward.validateExposure" . }}
{{- end }}

{{/* Checks of OIDC, the external URL and how the chart is exposed and scraped (part of keyward.validate). */}}
{{- define "keyward.validateExposure" -}}
{{- with .Values.controlplane.externalUrl }}
{{- if not (regexMatch "^https?://[^/?#]+(/[^?#]*[^/?#])?$" .) }}
{{- fail (printf "controlplane.externalUrl must be http(s)://host[:port][/path] without a trailing slash, got %q" .) }}
{{- end }}
{{- end }}
{{- if .Values.oidc.issuer }}
{{- if not (hasPrefix "https://" .Values.oidc.issuer) }}
{{- fail (printf "oidc.issuer must be an https:// URL, got %q" .Values.oidc.issuer) }}
{{- end }}
{{- if not .Values.oidc.clientId }}
{{- fail "oidc.issuer is set, so oidc.clientId must be set too" }}
{{- end }}
{{- if not (include "keyward.oidcRedirectBase" .) }}
{{- fail "oidc.issuer is set: set controlplane.externalUrl (or oidc.redirectBase), the URL browsers come back to" }}
{{- end }}
{{- end }}
{{- range $name := list "gateway" "controlplane" }}
{{- $component := index $.Values $name }}
{{- if and $component.ingress.enabled $component.httpRoute.enabled }}
{{- fail (printf "%s: enable ingress or httpRoute, not both" $name) }}
{{- end }}
{{- if and $component.ingress.enabled (not $component.ingress.hosts) }}
{{- fail (printf "%s.ingress.enabled needs at least one host in %s.ingress.hosts" $name $name) }}
{{- end }}
{{- if and $component.httpRoute.enabled (not $component.httpRoute.parentRefs) }}
{{- fail (printf "%s.httpRoute.enabled needs the Gateway to attach to in %s.httpRoute.parentRefs" $name $name) }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "enable metrics.serviceMonitor or metrics.podMonitor, not both: every target would be scraped twice" }}
{{- end }}
{{- end }}
