{{/* Names and labels shared by every template. */}}

{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tessera.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tessera.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "tessera.controller.fullname" -}}
{{- printf "%s-controller" (include "tessera.fullname" .) }}
{{- end }}

{{- define "tessera.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "tessera.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tessera.plugin.fullname" -}}
{{- printf "%s-kubelet-plugin" (include "tessera.fullname" .) }}
{{- end }}

{{- define "tessera.plugin.serviceAccountName" -}}
{{- if .Values.kubeletPlugin.serviceAccount.create }}
{{- default (include "tessera.plugin.fullname" .) .Values.kubeletPlugin.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.kubeletPlugin.serviceAccount.name }}
{{- end }}
{{- end }}

{{- /*
The API server's address for clusters whose pods cannot reach it through the
kubernetes Service (apiServer.host): client-go's in-cluster configuration reads
these two variables, which the kubelet otherwise sets from that Service, and a
container's own env wins over the kubelet's.
*/ -}}
{{- define "tessera.apiServerEnv" -}}
{{- with .Values.apiServer.host -}}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ $.Values.apiServer.port | quote }}
{{- end }}
{{- end }}

{{/*
tessera.idleReports is non-empty when the controller marks idle claims
(controller.idleAfter is not zero): only then do the kubelet plugins publish
their idle reports.
*/}}
{{- define "tessera.idleReports" -}}
{{- if not (regexMatch "^(0+(\\.0+)?[a-zµ]*)+$" (toString .Values.controller.idleAfter)) }}true{{ end }}
{{- end }}

{{/*
The gpu.tessera.dev entries of a ResourceClaim update's status.devices whose
tenancy decision (the tenancy.tessera.dev/admitted and /rejected conditions)
or decision record (data) the update sets or changes: a CEL expression over
object and oldObject. Removed entries are not in it (the API server drops the
entries of a deallocated claim).
*/}}
{{- define "tessera.changedDecisions" -}}
object.?status.?devices.orValue([]).filter(d, d.driver == "gpu.tessera.dev" &&
  (d.?conditions.orValue([]).exists(c, c.type in ["tenancy.tessera.dev/admitted", "tenancy.tessera.dev/rejected"]) || has(d.data)) &&
  !oldObject.?status.?devices.orValue([]).exists(o, o.driver == d.driver && o.pool == d.pool && o.device == d.device &&
    o.?shareID.orValue("") == d.?shareID.orValue("") &&
    o.?data.orValue({}) == d.?data.orValue({}) &&
    o.?conditions.orValue([]).filter(c, c.type in ["tenancy.tessera.dev/admitted", "tenancy.tessera.dev/rejected"]) ==
      d.?conditions.orValue([]).filter(c, c.type in ["tenancy.tessera.dev/admitted", "tenancy.tessera.dev/rejected"])))
{{- end -}}

{{/*
The controller's leader-election Lease (internal/controller.LeaderElectionID).
*/}}
{{- define "tessera.controller.leaderElectionID" -}}
tessera-dra-controller
{{- end -}}
