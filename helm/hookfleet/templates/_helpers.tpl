{{/* Chart name, overridable. */}}
{{- define "hookfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "hookfleet.fullname" -}}
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

{{/* Labels on every resource. */}}
{{- define "hookfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "hookfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels selecting every pod of the release (worker and relay). */}}
{{- define "hookfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image reference: `repository@digest` when image.digest is set (the tag is then ignored), else `repository:tag`. */}}
{{- define "hookfleet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
topologySpreadConstraints of one component's pods: each constraint without a labelSelector
gets one selecting the release's pods of that component, so values need no release names.
Call with (dict "ctx" $ "component" "worker" "constraints" .Values.worker.topologySpreadConstraints).
*/}}
{{- define "hookfleet.topologySpreadConstraints" -}}
{{- $out := list }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $labels := include "hookfleet.selectorLabels" $.ctx | fromYaml }}
{{- $_ := set $labels "app.kubernetes.io/component" $.component }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $labels) }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- with $out }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* ServiceAccount used by the pods. */}}
{{- define "hookfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hookfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the URLs; rendering fails with a clear message without it. */}}
{{- define "hookfleet.secretName" -}}
{{- required "existingSecret.name is required: create a Secret with the AMQP and database URLs (keys existingSecret.amqpUrlKey and existingSecret.databaseUrlKey) and set its name" .Values.existingSecret.name }}
{{- end }}

{{/* terminationGracePeriodSeconds: the drain timeout plus a margin, so draining is never cut short. */}}
{{- define "hookfleet.terminationGracePeriod" -}}
{{- add (int .Values.drainTimeoutSeconds) (int .Values.terminationGraceMarginSeconds) }}
{{- end }}

{{/* Path of the config file inside the pods. */}}
{{- define "hookfleet.configPath" -}}/etc/hookfleet/config.toml{{- end }}

{{/*
The effective config map: values.config plus the keys the chart owns. Setting an owned key
in values.config fails, so a value is never silently ignored.
*/}}
{{- define "hookfleet.configValues" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- range $section := list "amqp" "database" "admin" "spool" "worker" }}
{{- if not (hasKey $cfg $section) }}{{ $_ := set $cfg $section dict }}{{ end }}
{{- end }}
{{- range $owned := list "amqp.url" "database.url" "database.auto_migrate" "admin.listen" "spool.dir" "worker.drain_timeout" }}
{{- $parts := splitList "." $owned }}
{{- if hasKey (index $cfg (first $parts)) (last $parts) }}
{{- fail (printf "config.%s is set by the chart; remove it from values.config (see values.yaml)" $owned) }}
{{- end }}
{{- end }}
{{- $_ := set $cfg.database "auto_migrate" false }}
{{- $_ := set $cfg.admin "listen" (printf "0.0.0.0:%d" (int .Values.admin.port)) }}
{{- $_ := set $cfg.spool "dir" "/var/lib/hookfleet/spool" }}
{{- $_ := set $cfg.worker "drain_timeout" (printf "%ds" (int .Values.drainTimeoutSeconds)) }}
{{- toJson $cfg }}
{{- end }}

{{/*
Renders a two-level map as TOML: top-level keys are tables, their map values subtables,
everything else `key = <JSON>` (JSON strings, numbers, booleans and arrays are valid TOML).
*/}}
{{- define "hookfleet.toml" -}}
{{- range $section, $body := . }}
[{{ $section }}]
{{- range $k, $v := $body }}
{{- if not (kindIs "map" $v) }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $body }}
{{- if kindIs "map" $v }}
[{{ $section }}.{{ $k }}]
{{- range $k2, $v2 := $v }}
{{ toJson $k2 }} = {{ toJson $v2 }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}
{{- end }}

{{/* The config file text. */}}
{{- define "hookfleet.configToml" -}}
# Rendered by the hookfleet chart from values.config; see config/default.toml for every key.
{{ include "hookfleet.toml" (include "hookfleet.configValues" . | fromJson) }}
{{- end }}

{{/* Environment shared by every hookfleet container: the URLs from the Secret, HOME for git. */}}
{{- define "hookfleet.env" -}}
{{- if .Values.existingSecret.amqpUrlsKey }}
- name: HOOKFLEET_AMQP__URLS
  valueFrom:
    secretKeyRef:
      name: {{ include "hookfleet.secretName" . }}
      key: {{ .Values.existingSecret.amqpUrlsKey }}
{{- else }}
- name: HOOKFLEET_AMQP__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "hookfleet.secretName" . }}
      key: {{ .Values.existingSecret.amqpUrlKey }}
{{- end }}
- name: HOOKFLEET_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "hookfleet.secretName" . }}
      key: {{ .Values.existingSecret.databaseUrlKey }}
{{- if .Values.existingSecret.webhookSecretKeyKey }}
- name: HOOKFLEET_WEBHOOK__SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "hookfleet.secretName" . }}
      key: {{ .Values.existingSecret.webhookSecretKeyKey }}
{{- end }}
{{- if .Values.existingSecret.consoleTokenKey }}
- name: HOOKFLEET_ADMIN__CONSOLE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "hookfleet.secretName" . }}
      key: {{ .Values.existingSecret.consoleTokenKey }}
{{- end }}
- name: HOME
  value: /tmp
{{- end }}

{{/* The writable volumes every pod mounts (the root filesystem is read-only). */}}
{{- define "hookfleet.volumes" -}}
- name: config
  configMap:
    name: {{ include "hookfleet.fullname" . }}
- name: spool
  emptyDir:
    sizeLimit: {{ .Values.volumes.spoolSizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.volumes.tmpSizeLimit }}
{{ include "hookfleet.privateCAVolume" . }}
{{- end }}

{{/* The privateCA ConfigMap as a volume (nothing when unset); every pod that loads the config mounts it. */}}
{{- define "hookfleet.privateCAVolume" -}}
{{- with .Values.privateCA.configMap }}
- name: private-ca
  configMap:
    name: {{ . }}
{{- end }}
{{- end }}

{{- define "hookfleet.privateCAMount" -}}
{{- if .Values.privateCA.configMap }}
- name: private-ca
  mountPath: /etc/hookfleet-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "hookfleet.volumeMounts" -}}
- name: config
  mountPath: /etc/hookfleet
  readOnly: true
- name: spool
  mountPath: /var/lib/hookfleet/spool
- name: tmp
  mountPath: /tmp
{{ include "hookfleet.privateCAMount" . }}
{{- end }}
